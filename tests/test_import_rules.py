"""The layering holds: nothing imports upward, and the files-only floors load no torch.

Floors, from the ground up: ``common`` (torch-free: errors, atomic writes, the sweep folder's
layout) → ``trainers`` and ``certify`` (certify evaluates trainers' models; a trial config holds
certify's sampling keys) → ``sweep``; ``analysis`` stands on ``common`` alone, so
``smoothadv analyze`` and a notebook reading results need neither torch nor Ray. Imports are
checked twice: statically (every import statement in the source, even those inside functions)
and at run time, in a fresh interpreter, by what lands in ``sys.modules``.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("common", "trainers", "certify", "sweep", "analysis")
# Package → the packages of this repository (and heavy libraries) it must never import.
FORBIDDEN = {
    "common": {"trainers", "certify", "sweep", "analysis", "torch", "torchvision", "ray"},
    "trainers": {"sweep", "analysis"},
    "certify": {"sweep", "analysis"},
    "analysis": {"trainers", "certify", "sweep", "torch", "torchvision", "ray"},
}


def _modules(package: str) -> list[str]:
    return sorted(
        package if p.name == "__init__.py" else f"{package}.{p.stem}"
        for p in (ROOT / package).glob("*.py"))


def _top(module: str) -> str:
    """The package a module belongs to: ``smoothadv.sweep.lifecycle`` → ``sweep``, ``torch.nn`` →
    ``torch``."""
    parts = module.split(".")
    return parts[1] if parts[0] == "smoothadv" and len(parts) > 1 else parts[0]


def _imported(path: Path) -> set[str]:
    """The top-level names of the absolute imports in ``path`` (relative ones stay inside)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found |= {_top(alias.name) for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(_top(node.module))
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_source_file_imports_a_forbidden_floor(package):
    bad = {f"{path.relative_to(ROOT)} imports {name}"
           for path in sorted((ROOT / package).rglob("*.py"))
           for name in _imported(path) & FORBIDDEN[package]}
    assert not bad, sorted(bad)


def _loaded(module: str) -> set[str]:
    """The top-level packages in sys.modules after ``import module`` in a fresh interpreter
    run from this checkout."""
    code = (f"import json, sys, smoothadv.{module}; "
            "print(json.dumps(sorted(sys.modules)))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return {_top(m) for m in json.loads(result.stdout.splitlines()[-1])}


@pytest.mark.parametrize("module", _modules("analysis") + _modules("common"))
def test_files_only_floors_load_no_torch_nor_the_upper_floors(module):
    leaked = _loaded(module) & FORBIDDEN[module.split(".")[0]]
    assert not leaked, f"import {module} loads {sorted(leaked)}"


def test_the_checkout_is_what_the_subprocesses_import():
    """The run-time checks above test this tree, not some installed copy."""
    code = ("import smoothadv.common as c, smoothadv.analysis as a; print(c.__file__); "
            "print(a.__file__)")
    out = subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True,
                         text=True, timeout=60, check=True).stdout.split()
    assert [Path(p).resolve().parent.parent for p in out] == [ROOT, ROOT]


def test_training_and_certifying_load_torchvision_only_when_used():
    """torchvision's import (its models, then torch._dynamo: ~1.3 s a process) is paid only by
    a run that augments, downloads or builds a torchvision model: every Ray worker and CLI
    process of a synthetic or Fashion-MNIST run starts without it."""
    code = ("import sys; import smoothadv.trainers.train, smoothadv.certify.runner; "
            "from smoothadv.trainers.datasets import load_dataset; "
            "load_dataset('synthetic', 'train'); "
            "print('torchvision' in sys.modules, 'torch._dynamo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-2:] == ["False", "False"]
