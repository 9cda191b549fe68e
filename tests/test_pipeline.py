"""Pipeline files: validation before anything runs, ${out} substitution, every step a CLI command,
and (slow) the demo pipeline end to end."""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from pathlib import Path

import pytest

from rag_diag.cli.pipeline import STEPS, Step, load_pipeline, run_pipeline
from rag_diag.errors import RagDiagError

ROOT = Path(__file__).resolve().parents[1]


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
        # a misspelt key would be ignored and the outputs written elsewhere
        ("[pipeline]\nouput = '/tmp/x'\n[[steps]]\nkind = 'diagnose'\n", "\\[pipeline\\] has unknown key 'ouput'"),
        ("[pipeline]\n[extra]\n[[steps]]\nkind = 'diagnose'\n", "the file has unknown key 'extra'"),
        ("[pipeline]\nkind = 'reproduce_paper'\nsede = 1\n", "unknown key 'sede'"),
        ("[pipeline]\n[steps]\nkind = 'encode'\n", "'steps' must be an array of tables"),
        ("[pipeline]\nsteps = ['encode']\n", "unknown key 'steps'"),
        ("steps = ['encode']\n[pipeline]\n", "'steps' must be an array of tables"),
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
    for path in sorted((ROOT / "pipelines").glob("*.toml")):
        config, steps = load_pipeline(path)
        assert all(step.kind in STEPS for step in steps)
        assert steps or config["pipeline"].get("kind")


def test_step_command_is_the_equivalent_command_line():
    step = Step("diagnose", {"eval": "o/eval", "collapse": "o/c d", "out": "o/diag", "report": False}, 1)
    assert shlex.split(step.command) == ["rag-diag", "diagnose", "--eval", "o/eval", "--collapse", "o/c d",
                                         "--out", "o/diag", "--no-report"]
    build = Step("build-corpus", {"name": "lee", "out": "x", "seed": 0}, 1)
    assert shlex.split(build.command) == ["rag-diag", "corpora", "build", "lee", "--out", "x", "--seed", "0"]
    assert Step("demo-report", {"out": "x"}, 2).command == ""


def test_a_step_runs_its_command_and_prints_it(tmp_path):
    """A one-step pipeline (no model): its recorded command, typed as a CLI call, gives the same bytes."""
    from rag_diag.cli import main

    path = _write(tmp_path, f"""
[pipeline]
out = "{tmp_path / 'out'}"
[[steps]]
kind = "build-corpus"
name = "lee"
out = "${{out}}/lee"
""")
    lines: list[str] = []
    (record,) = run_pipeline(path, echo=lines.append)
    built = tmp_path / "out" / "lee"
    assert record["kind"] == "build-corpus" and record["command"] in lines[0]
    words = shlex.split(record["command"])
    assert words[:4] == ["rag-diag", "corpora", "build", "lee"]
    again = tmp_path / "again"
    assert main([*words[1:words.index("--out")], "--out", str(again)]) == 0
    files = sorted(p.relative_to(built) for p in built.rglob("*") if p.is_file())
    assert files and files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    for name in files:
        assert (built / name).read_bytes() == (again / name).read_bytes(), name


def test_demo_report_needs_audit_and_choice(tmp_path):
    path = _write(tmp_path, "[pipeline]\nout = 'x'\n[[steps]]\nkind = 'demo-report'\nout = 'x'\n")
    with pytest.raises(RagDiagError, match="needs an audit step and a choose-pooling step"):
        run_pipeline(path, echo=lambda line: None)


@pytest.mark.slow
def test_demo_pipeline_end_to_end_on_a_small_licence_base(tmp_path, monkeypatch):
    """The demo's chain on 300 real licence notices: every artefact exists and the report agrees with them."""
    monkeypatch.chdir(tmp_path)
    demo = (ROOT / "pipelines" / "demo.toml").read_text()
    demo = demo.replace('size = "small"', "size = 300").replace('out = "reports/demo"', 'out = "out"')
    path = tmp_path / "demo.toml"
    path.write_text(demo)
    records = run_pipeline(path, echo=lambda line: None)
    assert [r["kind"] for r in records] == ["build-corpus", "build-store", "audit", "choose-pooling",
                                            "demo-report"]
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


@pytest.mark.parametrize(("line", "message"), [
    ("models = 'minilm'", "models must be a non-empty list of model names, got 'minilm'"),
    ("n = 'abc'", "n must be an integer ≥ 2, got 'abc'"),
    ("n = -5", "n must be an integer ≥ 2, got -5"),
    ("seed = 1.5", "seed must be an integer ≥ 0, got 1.5"),
])
def test_reproduce_paper_values_are_checked_before_any_work(tmp_path, line, message):
    from rag_diag.jobs.reproduce import reproduce_paper

    config = tomllib.loads(f"[pipeline]\nkind = 'reproduce_paper'\n{line}\n")
    with pytest.raises(RagDiagError, match=re.escape(message)):
        reproduce_paper(config, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_reproduce_paper_never_writes_into_another_folder(tmp_path):
    from rag_diag.jobs.reproduce import reproduce_paper

    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "metrics.json").write_text("{}")
    with pytest.raises(RagDiagError, match="not empty and was not written by rag-diag"):
        reproduce_paper({"pipeline": {"kind": "reproduce_paper", "models": ["minilm"], "n": 2}}, tmp_path / "eval")
    assert [p.name for p in (tmp_path / "eval").iterdir()] == ["metrics.json"]
