"""Reports: self-contained HTML (no external URL, no script), Markdown summary, headless Chromium render."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from rag_diag.report import (
    Confusion,
    DecileRow,
    ReportData,
    Section,
    StrategyRow,
    Verdict,
    render_report,
    word_diff,
)
from rag_diag.report.data import CauseRow

HOSTILE = '<script>alert("x")</script><img src="https://example.com/x.png">'
CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)


def sample_report() -> ReportData:
    rng = np.random.default_rng(0)
    return ReportData(
        title="Licences knowledge base",
        headline=[("failure rate", "0.250", "30 of 120 queries"), ("AUROC collapse → failure", "0.71", "")],
        verdict=Verdict("at risk", "failures are frequent.", ["failure rate 0.250", HOSTILE]),
        strategies=[
            StrategyRow("mean", 0.61, 0.70, 0.72, 0.0, None, None, 1_572_864, 0.41),
            StrategyRow("mean+std", 0.74, 0.80, 0.81, 0.09, 0.0004, True, 3_145_728, 0.55),
            StrategyRow("cls", 0.55, 0.66, 0.68, -0.04, 0.21, False),
        ],
        collapse_rates=rng.beta(2, 5, size=300),
        deciles=[DecileRow(d, d / 10, (d + 1) / 10, 12, d, d / 12) for d in range(1, 11)],
        causes=[CauseRow("lexical", 20, 0.667, "add BM25"), CauseRow("encoder", 10, 0.333, "another model"),
                CauseRow("truncated", 0, 0.0, "encode long documents in windows", "no windowed run")],
        confusions=[
            Confusion("q1", "gpl two or later", "gpl2+", "under the GNU GPL version 2 or any later version",
                      "gpl3+", "under the GNU GPL version 3 or any later version", 2, 0.31, 0.98,
                      "gpl-2.0-plus", "gpl-3.0-plus"),
            Confusion("q2", HOSTILE, "lgpl21+", "GNU Lesser General Public License version 2.1 " + HOSTILE,
                      "lgpl2+", "GNU Library General Public License version 2", None, 0.22, 0.97),
        ],
        sections=[
            Section("Hubness", "k-occurrence skew 3.1", ["document", "k-occurrence"],
                    [["mit", 14], ["bsd", 9]]),
            ("ANN recall", "recall@10 of the HNSW index against exact search: 0.998"),
        ],
        commands=["rag-diag diagnose --eval e --collapse c --out o"],
        tables={"failures": pl.DataFrame({"query_id": ["q1", "q2"], "socm": [0.31, 0.22]})},
    )


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> tuple[Path, Path]:
    return render_report(tmp_path_factory.mktemp("report"), sample_report())


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[tuple[str, str, str]] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        for name, value in attrs:
            if name in ("src", "href", "xlink:href") and value is not None:
                self.links.append((tag, name, value))


def _links(html: str) -> _Collector:
    collector = _Collector()
    collector.feed(html)
    return collector


def _is_external(value: str) -> bool:
    return bool(re.match(r"\s*(https?:|//|ftp:|file:)", value, re.IGNORECASE))


def test_no_external_urls_and_no_scripts(rendered):
    html = rendered[0].read_text()
    page = _links(html)
    assert "script" not in page.tags
    resources = [(t, n, v) for t, n, v in page.links if t in ("script", "link", "img")]
    assert len(resources) >= 3
    assert not [link for link in page.links if _is_external(link[2])]
    for _, _, value in resources:
        assert value.startswith("data:image/svg+xml;base64,")
        svg = base64.b64decode(value.split(",", 1)[1]).decode()
        assert not [link for link in _links(svg).links if not link[2].startswith("#")]


def test_texts_are_escaped(rendered):
    html = rendered[0].read_text()
    assert "&lt;script&gt;alert(" in html
    assert "<script>" not in html and '<img src="https://example.com' not in html


def test_markdown_summary_and_tables_beside(rendered):
    html_path, md_path = rendered
    markdown = md_path.read_text()
    assert markdown.startswith("# Licences knowledge base")
    assert "| mean+std | 0.740 |" in markdown and "## Verdict: at risk" in markdown
    assert "only in relevant: *2*; only in confuser: *3*" in markdown
    assert "## Hubness" in markdown and "| mit | 14 |" in markdown
    # a cause that could not be checked is not counted as 0
    assert "| lexical | 20 | 0.667 | add BM25 |" in markdown
    assert "| truncated | not checked | — | not checked: no windowed run |" in markdown
    assert "not checked: no windowed run" in html_path.read_text()
    assert pl.read_parquet(html_path.parent / "failures.parquet")["query_id"].to_list() == ["q1", "q2"]


def test_word_diff_marks_only_differing_words():
    left, right = word_diff("version 2 or later", "version 3 or later")
    assert left == [("same", "version"), ("del", "2"), ("same", "or later")]
    assert right == [("same", "version"), ("ins", "3"), ("same", "or later")]
    assert word_diff("a b", "a b") == ([("same", "a b")], [("same", "a b")])


def test_empty_report_renders(tmp_path):
    html_path, md_path = render_report(tmp_path, ReportData(title="nothing yet"))
    assert "nothing yet" in html_path.read_text() and md_path.read_text().startswith("# nothing yet")


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,2000", *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=180, check=True)


@pytest.mark.optional
@pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium is not installed (make chromium installs it)")
def test_chromium_renders_the_key_elements(rendered, tmp_path):
    from PIL import Image

    url = rendered[0].resolve().as_uri()
    dom = _chromium(tmp_path, "--dump-dom", url).stdout
    assert 'id="title">Licences knowledge base<' in dom
    assert "0.250" in dom and "failure rate" in dom
    assert dom.count("<tr") >= 3 + 10 and 'id="strategy-table"' in dom
    assert len(re.findall(r'<img[^>]+src="data:image/svg\+xml;base64,', dom)) == 4  # causes, strategies, rates, deciles
    assert dom.count('class="confusion"') == 2 and "<del>2</del>" in dom and "<ins>3</ins>" in dom

    screenshot = tmp_path / "report.png"
    _chromium(tmp_path, f"--screenshot={screenshot}", url)
    image = Image.open(screenshot).convert("RGB")
    assert image.size == (1280, 2000)
    assert screenshot.stat().st_size > 20_000
    colours = image.getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50
    # the plots are drawn: the accent blue of the bars is on the page
    assert any(abs(r - 0x3B) < 8 and abs(g - 0x6E) < 8 and abs(b - 0xA5) < 8 for _, (r, g, b) in colours)


def test_strategy_rows_from_an_evaluation_manifest():
    from rag_diag.report.views import strategy_rows

    manifest = {
        "metrics": {"mean": {"P@1": 0.5, "MRR@10": 0.6, "nDCG@10": 0.7},
                    "cls": {"P@1": 0.4, "MRR@10": 0.5, "nDCG@10": 0.65}},
        "significance": {"cls": {"nDCG@10": {"p_value": 0.01, "corrected_p_value": 0.02, "significant": True}}},
    }
    mean, cls = strategy_rows(manifest)
    assert (mean.strategy, mean.delta_vs_mean, mean.p_value, mean.significant) == ("mean", 0.0, None, None)
    assert (cls.strategy, cls.p_at_1, cls.mrr_at_10, cls.ndcg_at_10) == ("cls", 0.4, 0.5, 0.65)
    assert cls.delta_vs_mean == pytest.approx(-0.05, abs=1e-15)  # one double subtraction: ≤ 1 ulp of 0.7
    assert cls.p_value == 0.02 and cls.significant is True  # the corrected p-value is the one shown
