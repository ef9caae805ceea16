"""No import cycle among the modules of any package (``common``, ``trainers``, ``certify``,
``sweep``, ``analysis``, ``cli``).

Imports inside functions count too: a lazy import only hides a cycle (``trainers.train`` and
``trainers.self_training`` once imported each other that way)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("common", "trainers", "certify", "sweep", "analysis", "cli")


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _inside(name: str) -> str:
    """``smoothadv.sweep.lifecycle`` → ``sweep.lifecycle`` (the module's path in the repository)."""
    return name.removeprefix("smoothadv.")


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The modules of ``modules`` that ``path`` imports anywhere in its code."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found |= {_inside(a.name) for a in node.names if _inside(a.name) in modules}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            module = _inside(node.module)
            for alias in node.names:
                name = f"{module}.{alias.name}"
                found |= {name} if name in modules else {module} & set(modules)
    return found


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (as the path that closes it), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state and (found := visit(target)):
                return found
        path.pop()
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state and (found := visit(module)):
            return found
    return None


def test_no_import_cycle_in_any_package():
    modules = _modules()
    graph = {name: _imports(path, modules) - {name} for name, path in modules.items()}
    assert "trainers.train" in graph and "trainers.self_training" in graph
    cycle = _cycle(graph)
    assert cycle is None, " → ".join(cycle)


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
