"""The layout holds: rooms of include/ import only downwards (no cycle between rooms or between files),
task logic imports no Airflow, the product imports no benchmark or test, and tests share their harness
through tests/support, never through a conftest or another test module."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.support.processes import ROOT


def _imports(path: Path) -> list[str]:
    """Every module ``path`` imports (absolute imports, anywhere in the file)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append(node.module)
            out += [f"{node.module}.{a.name}" for a in node.names]
    return out


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


PRODUCT = sorted((ROOT / "include").rglob("*.py"))
MODULES = {_module(p): p for p in PRODUCT}


def _product_edges(key) -> dict[str, set[str]]:
    """Import edges between ``key(module)`` of the product's modules (self-edges left out)."""
    edges: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        for imported in _imports(path):
            target = imported if imported in MODULES else imported.rpartition(".")[0]
            if target in MODULES and key(target) != key(name):
                edges.setdefault(key(name), set()).add(key(target))
    return edges


def test_no_two_rooms_of_include_import_each_other():
    def room(module: str) -> str:
        return module.split(".")[1] if module.count(".") else module

    assert _cycles(_product_edges(room)) == []


def test_no_import_cycle_between_product_files():
    assert _cycles(_product_edges(lambda m: m)) == []


def test_task_logic_imports_no_airflow():
    offenders = [
        str(p.relative_to(ROOT))
        for p in (ROOT / "include" / "tasks").rglob("*.py")
        if any(m == "airflow" or m.startswith("airflow.") for m in _imports(p))
    ]
    assert offenders == []


def test_the_product_imports_no_benchmark_or_test():
    offenders = {
        str(p.relative_to(ROOT)): m
        for p in [*PRODUCT, *(ROOT / "dags").glob("*.py"), *(ROOT / "plugins").glob("*.py")]
        for m in _imports(p)
        if m.split(".")[0] in ("benchmarks", "tests")
    }
    assert offenders == {}


def test_tests_share_their_harness_through_support_only():
    offenders = {
        str(p.relative_to(ROOT)): m
        for p in (ROOT / "tests").rglob("*.py")
        for m in _imports(p)
        if m.startswith("tests.") and not m.startswith("tests.support")
    }
    assert offenders == {}
