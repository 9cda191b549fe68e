"""Pipeline files: validation before anything runs, ${out} substitution, a real end-to-end run."""

from __future__ import annotations

import json

import pytest

from rag_diag.errors import RagDiagError
from rag_diag.pipeline import STEPS, load_pipeline


def _write(tmp_path, text: str):
    path = tmp_path / "p.toml"
    path.write_text(text)
    return path


def test_out_is_substituted_in_every_string(tmp_path):
    path = _write(tmp_path, """
[pipeline]
out = "reports/x"
[[steps]]
kind = "diagnose"
eval = "${out}/eval"
collapse = "${out}/collapse"
out = "${out}/diagnose"
""")
    _, steps = load_pipeline(path)
    assert steps[0].params == {"eval": "reports/x/eval", "collapse": "reports/x/collapse", "out": "reports/x/diagnose"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[pipeline]\n[[steps]]\nkind = 'teleport'\n", "unknown kind 'teleport'"),
        ("[[steps]]\nkind = 'diagnose'\n", "missing \\[pipeline\\]"),
        ("[pipeline\n", "not valid TOML"),
        ("[pipeline]\nname = 'empty'\n", "no \\[\\[steps\\]\\]"),
    ],
)
def test_bad_pipeline_files_are_refused_before_running(tmp_path, text, message):
    with pytest.raises(RagDiagError, match=message):
        load_pipeline(_write(tmp_path, text))


def test_cli_run_missing_file_is_one_line_error(tmp_path, capsys):
    from rag_diag.cli import main

    assert main(["run", str(tmp_path / "nope.toml")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "not found" in err and "\n" not in err


def test_bundled_pipelines_parse_and_use_known_steps():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "pipelines"
    for path in sorted(root.glob("*.toml")):
        config, steps = load_pipeline(path)
        assert all(step.kind in STEPS for step in steps)
        assert steps or config["pipeline"].get("kind")


@pytest.mark.slow
def test_demo_pipeline_end_to_end_on_a_small_licence_base(tmp_path, monkeypatch):
    """The demo's chain on 300 real licence notices: every artefact exists and the report agrees with them."""
    from rag_diag.pipeline import run_pipeline

    monkeypatch.chdir(tmp_path)
    demo = (__import__("pathlib").Path(__file__).resolve().parents[1] / "pipelines" / "demo.toml").read_text()
    demo = demo.replace('size = "small"', "size = 300").replace('out = "reports/demo"', 'out = "out"')
    path = tmp_path / "demo.toml"
    path.write_text(demo)
    run_pipeline(path)
    out = tmp_path / "out"
    for name in ("report.html", "summary.md", "audit/audit.json", "choose/recommendation.json",
                 "audit/diagnosis/diagnosis.json", "audit/collapse/docs.parquet", "store/index.faiss"):
        assert (out / name).is_file(), name
    html = (out / "report.html").read_text()
    recommendation = json.loads((out / "choose" / "recommendation.json").read_text())
    assert recommendation["recommended"] in html
    diagnosis = json.loads((out / "audit" / "diagnosis" / "diagnosis.json").read_text())
    assert diagnosis["verdict"]["label"] in html
    assert f"{diagnosis['failure_rate']:.3f}" in html
