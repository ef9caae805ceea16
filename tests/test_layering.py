"""The packages import one way (issue 23): ``common`` is the ground floor, ``trainers`` builds
on it, ``certify`` on both, ``sweep`` on all three; ``analysis`` reads files and builds on
``common`` only; the command line (``cli``) sits on top of them all and nothing imports it.

Every ``.py`` under these packages is parsed, so imports inside functions count as much as
those at the top of a file (as do ``import_module("...")`` calls with a literal name)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# What each package may import besides itself.
ALLOWED = {
    "common": set(),
    "trainers": {"common"},
    "certify": {"common", "trainers"},
    "sweep": {"common", "trainers", "certify"},
    "analysis": {"common"},
    "cli": {"common", "trainers", "certify", "sweep", "analysis"},
}
# Third-party packages a package must not load: the ground floor and the file readers stay
# light (no torch, no Ray).
LIGHT = {"common": {"torch", "ray"}, "analysis": {"torch", "ray"}}


def _imports(path: Path, package: str) -> list[tuple[int, str]]:
    """(line, dotted module name) of every import in ``path``, at any depth; a relative import
    is named from ``package``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append((node.lineno, f"smoothadv.{package}" if node.level
                          else node.module or ""))
        elif (isinstance(node, ast.Call) and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
              and (getattr(node.func, "id", None) == "import_module"
                   or getattr(node.func, "attr", None) == "import_module")):
            found.append((node.lineno, node.args[0].value))
    return found


def _all_imports():
    """(file relative to the root, line, importing package, imported module) for every import
    in the packages."""
    for package in ALLOWED:
        for path in sorted((ROOT / package).rglob("*.py")):
            for line, module in _imports(path, package):
                yield path.relative_to(ROOT).as_posix(), line, package, module


def _inside(module: str) -> str:
    """``smoothadv.sweep.lifecycle`` → ``sweep.lifecycle``; one outside the namespace unchanged."""
    return module.removeprefix("smoothadv.")


def layering_violations() -> list[str]:
    """One line (file, line, edge) per import the layering refuses."""
    bad = []
    for file, line, package, module in _all_imports():
        target = _inside(module).split(".")[0]
        if target in ALLOWED and target != package and target not in ALLOWED[package]:
            bad.append(f"{file}:{line}: {package} -> {target} (import {module})")
        elif target in LIGHT.get(package, ()):
            bad.append(f"{file}:{line}: {package} loads {target} (import {module})")
    return bad


def test_packages_import_one_way():
    bad = layering_violations()
    assert not bad, "\n".join(bad)


def test_imported_project_modules_exist():
    """A moved module leaves no import behind, in the packages, the tests or the benchmarks
    (one inside a function fails only when called), and every import goes through the one
    namespace (a bare ``common`` would be a second copy of the module, or a researcher's own
    folder of that name)."""
    imports = [(file, line, module) for file, line, _, module in _all_imports()]
    for folder in ("tests", "benchmarks"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            file = path.relative_to(ROOT).as_posix()
            imports += [(file, line, module) for line, module in _imports(path, folder)]
    missing = []
    for file, line, module in imports:
        if module.split(".")[0] in ALLOWED:
            missing.append(f"{file}:{line}: import {module} as smoothadv.{module}")
            continue
        parts = _inside(module).split(".")
        if not module.startswith("smoothadv.") or parts[0] not in ALLOWED:
            continue
        base = ROOT.joinpath(*parts)
        if not (base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()):
            missing.append(f"{file}:{line}: no module {module}")
    assert not missing, "\n".join(missing)


def test_only_smoothadv_is_installed_at_the_top():
    """Installed, the packages live under ``smoothadv`` only: a bare ``common`` or ``sweep``
    (say, a researcher's own folder of that name) is never shadowed by, or shadows, ours."""
    import subprocess
    import sys

    code = ("import importlib.util as u, smoothadv.sweep.spec as s; "
            "print([n for n in ('common', 'trainers', 'certify', 'sweep', 'analysis', 'cli') "
            "if u.find_spec(n)], s.PRESETS.is_dir())")
    out = subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True,
                         text=True, timeout=60, check=True).stdout
    assert out.split() == ["[]", "True"]


MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60


def test_no_module_over_400_lines_and_no_function_over_60():
    """Small modules with one job each (issue 23): a module of the product past 400 lines, or a
    function past 60 (its ``def`` to its last line), is a sign it does two jobs."""
    too_long = []
    for package in ALLOWED:
        for path in sorted((ROOT / package).rglob("*.py")):
            text = path.read_text()
            name = path.relative_to(ROOT).as_posix()
            if text.count("\n") > MAX_MODULE_LINES:
                too_long.append(f"{name}: {text.count(chr(10))} lines")
            for node in ast.walk(ast.parse(text, name)):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    length = node.end_lineno - node.lineno + 1
                    if length > MAX_FUNCTION_LINES:
                        too_long.append(f"{name}:{node.lineno}: {node.name}, {length} lines")
    assert not too_long, "\n".join(too_long)
