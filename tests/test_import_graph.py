"""The package layout of docs/ARCHITECTURE.md, checked on the source: no import cycle between the project's
modules (counting imports inside functions too), the dependency direction training -> evals -> interventions
(interventions imports neither; evals never imports training), and no function-level import without a
`# deferred:` comment saying what start-up time it saves."""

from __future__ import annotations

import ast
import io
import tokenize
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("interventions", "evals", "training")
ALLOWED = {"interventions": set(), "evals": {"interventions"}, "training": {"interventions", "evals"}}


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((REPO / pkg).rglob("*.py"))}


def _imports(path: Path, name: str, known: set[str]) -> set[str]:
    """The project modules `path` imports anywhere in its body (module level or inside functions)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        for target in targets:
            while target and target not in known:  # `from pkg import module` or a symbol of a module
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports."""
    modules = _modules()
    known = set(modules)
    return {name: _imports(path, name, known) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_checker_finds_a_planted_cycle_and_no_false_one():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_the_graph_sees_function_level_and_relative_imports():
    graph = import_graph()
    assert len(graph) > 50
    assert "interventions.errors" in graph["training.cli"] or any(
        "interventions" in m for m in graph["training.cli"])


def test_no_import_cycle():
    assert cycles(import_graph()) == []


@pytest.mark.parametrize("package", PACKAGES)
def test_dependency_direction(package):
    graph = import_graph()
    wrong = sorted(f"{m} -> {t}" for m, targets in graph.items() if m.split(".")[0] == package
                   for t in targets if t.split(".")[0] != package and t.split(".")[0] not in ALLOWED[package])
    assert wrong == []


DEFERRED = "# deferred:"


def undeclared_deferred_imports(source: str) -> list[int]:
    """Line numbers of the import statements inside a function (def, async def or lambda, at any depth) that carry no
    `# deferred: <what it saves>` comment on one of their lines or alone on the line just above. Imports at module
    level (under `if TYPE_CHECKING:`, `try:` or in a class body included) are not function-level."""
    comments = [tok for tok in tokenize.generate_tokens(io.StringIO(source).readline)
                if tok.type == tokenize.COMMENT and tok.string.startswith(DEFERRED)]
    on_line = {tok.start[0] for tok in comments}
    alone = {tok.start[0] for tok in comments if tok.line.lstrip().startswith("#")}
    found: list[int] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if in_function and isinstance(child, (ast.Import, ast.ImportFrom)):
                lines = set(range(child.lineno, (child.end_lineno or child.lineno) + 1))
                if not (lines & on_line or child.lineno - 1 in alone):
                    found.append(child.lineno)
            visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(ast.parse(source), False)
    return sorted(found)


def test_the_deferred_import_checker_on_a_planted_module():
    source = """from typing import TYPE_CHECKING
if TYPE_CHECKING:
    import torch
try:
    import ray
except ImportError:
    ray = None
class C:
    import json
def f():
    import os
    import torch  # deferred: torch costs ~1 s at CLI start
    # deferred: pandas costs ~0.5 s at CLI start
    import pandas
    from inspect_ai.log import (  # deferred: inspect_ai costs ~1 s
        read_eval_log)
    from sklearn.metrics import (
        roc_auc_score)
    def g():
        import sys  # an ordinary comment
        return sys
    x = "# deferred: in a string, not a comment"; import math
    import numpy  # deferred: numpy, ~0.1 s
    import scipy
    return lambda: __import__("re")
"""
    assert undeclared_deferred_imports(source) == [11, 17, 20, 22, 24]


def test_every_function_level_import_says_what_deferring_it_saves():
    """Issue 16: an import inside a function hides a dependency, so it is there only when it keeps a heavy library
    (torch, transformers, peft, datasets, pandas, inspect_ai, ...) off a start path (`emsteer --help`, a bad-input
    error, the `steer/` provider's import), and its line says so: `# deferred: <what it saves>`."""
    missing = [f"{path.relative_to(REPO)}:{line}" for path in _modules().values()
               for line in undeclared_deferred_imports(path.read_text())]
    assert missing == [], "function-level imports without a `# deferred:` comment:\n" + "\n".join(missing)
