"""What a report shows: typed sections filled by diagnose, choose-pooling and audit, plus shared helpers.

The renderers (:mod:`rag_diag.report.html`, :mod:`rag_diag.report.markdown`) only read these types;
they never compute a number, so the HTML and the Markdown summary always agree.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

VERDICT_LABELS = ("adequate", "at risk", "unsuitable")
"""Verdicts on mean pooling, best to worst (the HTML colours them green, amber, red)."""


@dataclass(frozen=True)
class Headline:
    """One headline number: ``value`` is already formatted (e.g. ``"0.412"``, ``"37 of 120"``)."""

    label: str
    value: str
    note: str = ""


@dataclass(frozen=True)
class StrategyRow:
    """One pooling strategy / re-ranker in the comparison table (``None`` = not measured)."""

    strategy: str
    p_at_1: float | None = None
    mrr_at_10: float | None = None
    ndcg_at_10: float | None = None
    delta_vs_mean: float | None = None
    p_value: float | None = None
    significant: bool | None = None
    index_bytes: int | None = None
    latency_ms: float | None = None


@dataclass(frozen=True)
class DecileRow:
    """Failure rate among queries whose relevant document falls in one collapse-rate decile."""

    decile: int
    low: float
    high: float
    n_queries: int
    n_failures: int
    failure_rate: float


@dataclass(frozen=True)
class Confusion:
    """A failed query: the relevant document and the confuser that outranked it, texts side by side."""

    query_id: str
    query_text: str
    relevant_id: str
    relevant_text: str
    confuser_id: str
    confuser_text: str
    relevant_rank: int | None = None
    socm: float | None = None
    cos: float | None = None
    relevant_label: str | None = None
    confuser_label: str | None = None


@dataclass(frozen=True)
class CauseRow:
    """One cause of the failure taxonomy: how many failures it explains, their share, the advice."""

    cause: str
    n_failures: int
    share: float
    advice: str
    not_checked: str | None = None
    """What was missing when the cause could not be checked (its count then claims nothing)."""


@dataclass(frozen=True)
class Verdict:
    """A verdict on mean pooling (one of :data:`VERDICT_LABELS`), a one-line summary and its evidence."""

    label: str
    summary: str
    evidence: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Section:
    """An extra section (audit findings: hubness, ANN recall, near-duplicate clusters …).

    ``text`` is plain text (escaped, paragraphs split on blank lines); ``columns`` / ``rows`` an
    optional table of plain values.
    """

    heading: str
    text: str = ""
    columns: list[str] = field(default_factory=list)
    rows: list[list[Any]] = field(default_factory=list)

    @classmethod
    def from_frame(cls, heading: str, frame: Any, text: str = "", limit: int = 50) -> Section:
        """A section from a polars DataFrame (first ``limit`` rows)."""
        head = frame.head(limit)
        return cls(heading, text, list(head.columns), [list(row) for row in head.iter_rows()])


@dataclass
class ReportData:
    """Everything one report shows. Empty fields are left out of the rendered report.

    Attributes:
        title: the report's title.
        answer: the short answer at the top: what fails, why, what to change.
        headline: headline numbers; ``(label, value, note)`` tuples are accepted.
        verdict: the verdict on mean pooling with its evidence.
        strategies: strategy comparison rows; ``delta_metric`` names the metric of ``delta_vs_mean``.
        collapse_rates: per-document collapse rates (→ histogram), described by ``collapse_label``.
        deciles: failure rate by collapse-rate decile (→ bar chart and table).
        causes: the failure taxonomy (→ table and bar chart); counts sum to the failures.
        confusions: the worst confusions, texts side by side with the differing words highlighted.
        sections: extra sections; ``(heading, text)`` tuples are accepted.
        commands: the commands that produced the numbers.
        tables: polars DataFrames written as ``<name>.parquet`` beside the report.
    """

    title: str
    answer: str = ""
    headline: list[Headline] = field(default_factory=list)
    verdict: Verdict | None = None
    strategies: list[StrategyRow] = field(default_factory=list)
    delta_metric: str = "nDCG@10"
    collapse_rates: Sequence[float] | np.ndarray = ()
    collapse_label: str = "collapse rate (mean SOCM with the k nearest neighbours)"
    deciles: list[DecileRow] = field(default_factory=list)
    causes: list[CauseRow] = field(default_factory=list)
    confusions: list[Confusion] = field(default_factory=list)
    sections: list[Section] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    tables: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.headline = [h if isinstance(h, Headline) else Headline(*h) for h in self.headline]
        self.sections = [s if isinstance(s, Section) else Section(*s) for s in self.sections]
        for name in self.tables:
            if not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or name.startswith("."):
                raise ValueError(f"table name '{name}' is not a plain file name")

    def finite_collapse_rates(self) -> np.ndarray:
        """The collapse rates as float64 with NaN dropped."""
        values = np.asarray(self.collapse_rates, dtype=np.float64)
        return values[np.isfinite(values)]


Segment = tuple[str, str]
"""(kind, text): kind is ``same``, ``del`` (only in the first text) or ``ins`` (only in the second)."""


def word_diff(first: str, second: str) -> tuple[list[Segment], list[Segment]]:
    """Word-level diff (difflib on whitespace tokens) as segments for each side.

    The first side marks words the second lacks as ``del``, the second marks words the first lacks as
    ``ins``; runs of equal words are merged into one ``same`` segment per side.
    """
    left_words, right_words = first.split(), second.split()
    matcher = difflib.SequenceMatcher(a=left_words, b=right_words, autojunk=False)
    left: list[Segment] = []
    right: list[Segment] = []
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            left.append(("same", " ".join(left_words[i1:i2])))
            right.append(("same", " ".join(right_words[j1:j2])))
            continue
        if i2 > i1:
            left.append(("del", " ".join(left_words[i1:i2])))
        if j2 > j1:
            right.append(("ins", " ".join(right_words[j1:j2])))
    return left, right


def format_value(value: Any, digits: int = 3) -> str:
    """A table cell: ``—`` for missing, fixed decimals for floats, yes/no for booleans."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, bool | np.bool_):
        return "yes" if value else "no"
    if isinstance(value, int | np.integer):
        return f"{int(value):,}"
    if isinstance(value, float | np.floating):
        return f"{float(value):.{digits}f}"
    return str(value)


def format_p_value(value: float | None) -> str:
    """p-values: ``<0.001`` below a thousandth, else three decimals."""
    if value is None or math.isnan(value):
        return "—"
    return "<0.001" if value < 0.001 else f"{value:.3f}"


def format_bytes(value: int | None) -> str:
    """Index sizes in binary units (KiB, MiB, GiB)."""
    if value is None:
        return "—"
    if value < 1024:
        return f"{value} B"
    size = value / 1024
    for unit in ("KiB", "MiB"):
        if size < 1024:
            return f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def format_signed(value: float | None) -> str:
    """Differences with an explicit sign (``+0.012``, ``−0.034``)."""
    if value is None or math.isnan(value):
        return "—"
    return f"{value:+.3f}".replace("-", "−")
