"""The package's import graph: no cycle, no upward import, no module over 400 lines.

Layers, lowest first (a module may import only its own layer or lower ones; imports inside a
function count too, since they still couple the modules):

0. ground: errors, atomic, progress, devices, sampling, cmdline, readers, defaults
1. data and models: corpora, models
2. tokens, pooling
3. collapse, retrieval, stores
4. evaluation
5. diagnosis
6. report (renders artefacts; the domain never imports it)
7. jobs (orchestration)
8. cli (the edge)
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "rag_diag"
LAYERS = {
    "errors": 0, "atomic": 0, "progress": 0, "devices": 0, "sampling": 0, "cmdline": 0, "readers": 0,
    "defaults": 0, "mapped": 0, "corpora": 1, "models": 1, "tokens": 2, "pooling": 2, "collapse": 3, "retrieval": 3,
    "stores": 3, "evaluation": 4, "diagnosis": 5, "report": 6, "jobs": 7, "cli": 8,
}
MAX_LINES = 400


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    path = PACKAGE.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _imports(path: Path) -> set[str]:
    """rag_diag modules imported anywhere in the file (``from rag_diag import atomic`` → rag_diag.atomic)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("rag_diag"):
            for alias in node.names:  # ``from pkg import module`` imports that module, not only pkg
                submodule = f"{node.module}.{alias.name}"
                found.add(submodule if _is_module(submodule) else node.module)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("rag_diag")}
    return found


def _layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.get(parts[1]) if len(parts) > 1 else None


FILES = sorted(PACKAGE.rglob("*.py"))
GRAPH = {_module(path): _imports(path) for path in FILES}


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_upward_import(path):
    module = _module(path)
    own = _layer(module)
    if own is None:  # the package's __init__ (the public API) may reach any layer lazily
        return
    upward = sorted(m for m in GRAPH[module] if (_layer(m) or 0) > own)
    assert not upward, f"{module} (layer {own}) imports {upward}"


def test_every_top_level_module_has_a_layer():
    tops = {_module(path).split(".")[1] for path in FILES if _module(path) != "rag_diag"}
    assert tops <= set(LAYERS), sorted(tops - set(LAYERS))


def test_no_import_cycle():
    known = set(GRAPH)

    def resolve(name: str) -> str | None:
        while name and name not in known:
            name = name.rpartition(".")[0]
        return name or None

    edges = {m: {r for r in (resolve(i) for i in imports) if r and r != m and r != "rag_diag"}
             for m, imports in GRAPH.items()}
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " → ".join([*trail, node, nxt]))
            if state.get(nxt) is None:
                visit(nxt, [*trail, node])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [])


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_modules_stay_small(path):
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(PACKAGE)} has {lines} lines"
