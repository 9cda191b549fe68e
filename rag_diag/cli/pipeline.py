"""Declarative pipelines: a TOML file of steps, each one a ``rag-diag`` command, run in order.

A pipeline file has a ``[pipeline]`` table (``name``, ``out``, optional ``description``) and a list of
``[[steps]]``. A step's ``kind`` names a command (:data:`STEPS`) and its other keys are that
command's options, spelled as in the command's ``--help`` with ``_`` for ``-``; in string values
``${out}`` is the pipeline's output folder. So every step is exactly a command a user could type
(``rag-diag run`` prints it), and the step receives the command's result object in memory: the
``demo-report`` step merges the ``audit`` and ``choose-pooling`` results without reading them back.

A file whose ``[pipeline]`` table has a ``kind`` and no steps is a whole-pipeline job
(``reproduce_paper``). Every command writes its output folder atomically, so an interrupted pipeline
can simply be rerun.
"""

from __future__ import annotations

import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rag_diag.cmdline import argv, command_line
from rag_diag.errors import RagDiagError

STEPS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "build-corpus": (("corpora", "build"), ("name",)),
    "build-store": (("store", "build"), ()),
    "encode": (("encode",), ()),
    "index": (("index",), ()),
    "evaluate": (("evaluate",), ()),
    "collapse": (("collapse",), ()),
    "diagnose": (("diagnose",), ()),
    "audit": (("audit",), ()),
    "choose-pooling": (("choose-pooling",), ()),
    "demo-report": ((), ()),
}
"""Step kind → (command words, positional parameters). ``demo-report`` is pipeline-only."""
HEADER_KEYS = ("name", "out", "description")
"""The ``[pipeline]`` keys of a pipeline of steps (a whole-pipeline job adds its own: :data:`JOB_KEYS`)."""


@dataclass(frozen=True)
class Step:
    """One pipeline step: its kind, parameters (``${out}`` already substituted) and position."""

    kind: str
    params: dict[str, Any]
    number: int

    @property
    def command(self) -> str:
        """The equivalent command line (empty for the pipeline-only ``demo-report``)."""
        words, positional = STEPS[self.kind]
        return command_line(words, self.params, positional) if words else ""


def _substitute(value: Any, variables: dict[str, str]) -> Any:
    if isinstance(value, str):
        for name, replacement in variables.items():
            value = value.replace("${" + name + "}", replacement)
        return value
    if isinstance(value, list):
        return [_substitute(item, variables) for item in value]
    if isinstance(value, dict):
        return {key: _substitute(item, variables) for key, item in value.items()}
    return value


def load_pipeline(path: str | Path) -> tuple[dict[str, Any], list[Step]]:
    """Parse and validate a pipeline file; unknown step kinds are refused before anything runs."""
    path = Path(path)
    if not path.is_file():
        raise RagDiagError(f"{path}: pipeline file not found")
    try:
        config = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise RagDiagError(f"{path}: not valid TOML ({exc})") from None
    header = config.get("pipeline")
    if not isinstance(header, dict):
        raise RagDiagError(f"{path}: missing [pipeline] table")
    _known(path, "the file", config, ("pipeline", "steps"))
    _known(path, "[pipeline]", header, (*HEADER_KEYS, *JOB_KEYS.get(str(header.get("kind")), ())))
    raw_steps = config.get("steps", [])
    if not isinstance(raw_steps, list) or not all(isinstance(raw, dict) for raw in raw_steps):
        raise RagDiagError(f"{path}: 'steps' must be an array of tables ([[steps]] sections)")
    variables = {"out": str(header.get("out", f"reports/{path.stem}"))}
    steps = []
    for number, raw in enumerate(raw_steps, start=1):
        kind = raw.get("kind")
        if kind not in STEPS:
            raise RagDiagError(f"{path}: step {number} has unknown kind '{kind}' (known: {', '.join(STEPS)})")
        params = _substitute({key: value for key, value in raw.items() if key != "kind"}, variables)
        steps.append(Step(kind, params, number))
    if not steps and header.get("kind") not in JOBS:
        raise RagDiagError(f"{path}: no [[steps]] and no known [pipeline] kind (known: {', '.join(JOBS)})")
    return config, steps


def _known(path: Path, where: str, table: dict[str, Any], keys: tuple[str, ...]) -> None:
    """Refuse a key ``table`` does not take (a misspelt ``out`` would otherwise be ignored and write elsewhere)."""
    unknown = sorted(set(table) - set(keys))
    if unknown:
        raise RagDiagError(f"{path}: {where} has unknown key{'s' if len(unknown) > 1 else ''} "
                           f"{', '.join(map(repr, unknown))} (known: {', '.join(keys)})")


def _run_command(step: Step) -> Any:
    """Invoke the step's command in this process and return its result object."""
    from rag_diag.cli.app import app

    words, positional = STEPS[step.kind]
    return app(args=argv(words, step.params, positional), prog_name="rag-diag", standalone_mode=False)


def _demo_report(step: Step, results: dict[str, Any]) -> Any:
    from rag_diag.jobs.demo import write_demo_report

    if "audit" not in results or "choose-pooling" not in results:
        raise RagDiagError("a demo-report step needs an audit step and a choose-pooling step before it")
    if "out" not in step.params:
        raise RagDiagError("the demo-report step needs 'out'")
    return write_demo_report(results["audit"], results["choose-pooling"], step.params["out"],
                             title=step.params.get("title"), commands=step.params.get("commands", []))


def run_pipeline(path: str | Path, echo: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Run every step of the pipeline at ``path`` in order; returns one record (kind, command, seconds) per step."""
    path = Path(path)
    config, steps = load_pipeline(path)
    header = config["pipeline"]
    if not steps:
        out = Path(header.get("out", f"reports/{path.stem}"))
        JOBS[header["kind"]](config, out)
        return [{"kind": header["kind"], "out": str(out)}]
    records: list[dict[str, Any]] = []
    results: dict[str, Any] = {}
    for step in steps:
        echo(f"step {step.number}/{len(steps)}: {step.kind}  {step.command}")
        started = time.perf_counter()
        results[step.kind] = _demo_report(step, results) if step.kind == "demo-report" else _run_command(step)
        seconds = time.perf_counter() - started
        echo(f"step {step.number} ({step.kind}) done in {seconds:.1f} s")
        records.append({"kind": step.kind, "command": step.command, "seconds": round(seconds, 1)})
    return records


def _reproduce_paper(config: dict[str, Any], out: Path) -> None:
    from rag_diag.jobs.reproduce import reproduce_paper

    reproduce_paper(config, out)


JOBS: dict[str, Callable[[dict[str, Any], Path], None]] = {"reproduce_paper": _reproduce_paper}
JOB_KEYS: dict[str, tuple[str, ...]] = {"reproduce_paper": ("kind", "models", "n", "seed", "device", "dtype")}
"""The ``[pipeline]`` keys each whole-pipeline job takes beside :data:`HEADER_KEYS`."""
