"""The package's import graph: the library never imports the CLI, and its subpackages import each other in one
direction only (no cycles), so a stage can be read and changed without the ones that use it."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "edgedistill"


def _module(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> dict[str, set[str]]:
    """module -> the edgedistill modules it imports anywhere in its file (top level or inside functions)."""
    out: dict[str, set[str]] = defaultdict(set)
    for path in PKG.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else \
                [a.name for a in node.names] if isinstance(node, ast.Import) else []
            out[_module(path)].update(n for n in names if n == "edgedistill" or n.startswith("edgedistill."))
    return out


def unit(module: str) -> str:
    """edgedistill.distill.train -> edgedistill.distill (a subpackage, or a top-level module)."""
    return ".".join(module.split(".")[:2])


def test_the_library_never_imports_the_cli():
    wrong = sorted(f"{m} -> {t}" for m, ts in imports().items() if not unit(m) in ("edgedistill.cli", "edgedistill.__main__")
                   for t in ts if unit(t) == "edgedistill.cli")
    assert not wrong, wrong


def test_subpackages_import_each_other_without_cycles():
    graph: dict[str, set[str]] = defaultdict(set)
    for m, ts in imports().items():
        for t in ts:
            if unit(m) != unit(t) and unit(t) != "edgedistill":  # the package root holds only the version
                graph[unit(m)].add(unit(t))
    cycles = []

    def visit(node, path):
        for nxt in sorted(graph[node]):
            if nxt in path:
                cycles.append(path[path.index(nxt):] + [nxt])
            elif len(path) < 12:
                visit(nxt, path + [nxt])

    for start in sorted(graph):
        visit(start, [start])
    assert not cycles, sorted({" -> ".join(c) for c in cycles})


def test_the_graph_sees_imports_inside_functions():
    # the check above is only as good as the parser: a lazy import inside a function must count
    assert "edgedistill.distill.stage" in imports()["edgedistill.pipeline"]


def test_the_bench_worker_needs_only_the_runtime():
    """The process that measures a bundle (on this machine or, later, on the device) imports the runtime and the
    data it grades with, never the export, quantize or training code."""
    got = {unit(t) for t in imports()["edgedistill.bench.worker"]}
    assert got and got <= {"edgedistill.runtime", "edgedistill.data", "edgedistill.paths", "edgedistill.stats",
                           "edgedistill.errors", "edgedistill.children", "edgedistill.runinfo"}, got
    assert "edgedistill.runtime" in got
