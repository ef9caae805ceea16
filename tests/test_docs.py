"""The documentation (issue 24): a short README with the two set-up commands, and a site that
builds with ``mkdocs build --strict`` (no broken link, no missing page, no undocumented spec
key), whose generated references name every spec key, every verb and every module."""

from __future__ import annotations

import argparse
import dataclasses
import html
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PACKAGES = ("common", "trainers", "certify", "sweep", "analysis", "cli")


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The site, built strictly from mkdocs.yml into a temporary folder."""
    if importlib.util.find_spec("mkdocs") is None:
        pytest.skip("mkdocs is not installed (it is in the dev extra: pip install -e '.[dev]')")
    out = tmp_path_factory.mktemp("site")
    # the hook leaves no __pycache__; Material's banner about MkDocs 2 stays out of the output
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "NO_MKDOCS_2_WARNING": "1"}
    # never --quiet: it drops the warnings before --strict counts them, and the build passes
    run = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict",
                          "-f", str(ROOT / "mkdocs.yml"), "-d", str(out)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, f"mkdocs build --strict failed:\n{run.stdout}\n{run.stderr}"
    return out


def _page(site: Path, page: str) -> str:
    return (site / page / "index.html").read_text(encoding="utf-8")


def _section(page: str, anchor: str) -> str:
    """The HTML from the heading ``anchor`` to the next heading of its level or above."""
    start = page.index(f'id="{anchor}"')
    end = re.compile(r"<h[12][ >]").search(page, start)
    return page[start:end.start() if end else len(page)]


def test_the_site_builds_strictly(site):
    for page in ("tutorial", "paper", "reliability", "security", "benchmarks",
                 "cluster/slurm", "cluster/kuberay", "cluster/ray-up", "cluster/storage",
                 "reference/spec", "reference/cli", "reference/python-api", "reference-facts"):
        assert (site / page / "index.html").is_file(), page


def test_the_spec_reference_names_every_key_of_every_block(site):
    """Generated from the dataclasses, so a key added to one of them appears (and one without
    a meaning fails the strict build: docs/hooks.py)."""
    from smoothadv.sweep.spec import OPTIONAL_BLOCKS, SPEC_KEYS
    from smoothadv.sweep.spec_blocks import Resources
    from smoothadv.trainers.config import CertifyConfig, TrialConfig

    page = _page(site, "reference/spec")
    blocks = {"trial-config": TrialConfig, "certify": CertifyConfig, "resources": Resources,
              **OPTIONAL_BLOCKS}
    expected = {anchor: [f.name for f in dataclasses.fields(cls)]
                for anchor, cls in blocks.items()}
    expected["spec-keys"] = list(SPEC_KEYS)
    missing = [f"{anchor}: {key}" for anchor, keys in expected.items()
               for key in keys if f"<td><code>{key}</code></td>" not in _section(page, anchor)]
    assert not missing, missing
    assert "<td>—</td>" not in page  # every key has a meaning


def _verbs(parser: argparse.ArgumentParser, path: tuple[str, ...] = ("smoothadv",)):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _verbs(sub, (*path, name))


def test_the_cli_reference_names_every_verb_and_option(site):
    from smoothadv.cli.main import build_parser

    page = html.unescape(_page(site, "reference/cli"))
    missing = []
    for path, parser in _verbs(build_parser()):
        if f"<code>{' '.join(path)}</code>" not in page:
            missing.append(" ".join(path))
        missing += [f"{' '.join(path)} {option}" for action in parser._actions
                    for option in action.option_strings if option not in page]
    assert not missing, missing


def test_the_python_api_names_every_module(site):
    page = _page(site, "reference/python-api")
    modules = [f"smoothadv.{package}.{path.stem}" for package in PACKAGES
               for path in sorted((ROOT / package).glob("*.py")) if path.stem != "__init__"]
    assert [m for m in modules if f"<code>{m}</code>" not in page] == []


def test_the_spec_reference_example_is_a_valid_spec():
    from smoothadv.sweep.spec import parse_spec

    text = (ROOT / "docs" / "reference" / "spec.md").read_text(encoding="utf-8")
    example = re.search(r"```yaml\n(.*?)```", text, re.S).group(1)
    assert len(parse_spec(yaml.safe_load(example)).trials()) == 7


def test_the_readme_is_short_and_keeps_the_two_set_up_commands():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 200
    assert "    make quickstart\n" in text and "    make test\n" in text
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()
          if line.strip() and not line.lstrip().startswith("#")]
    assert f"    {ci[-1]}\n" in text  # the README's test command is the one CI runs


def test_the_readmes_links_resolve():
    """Relative links (to docs/*.md), so the README works on GitHub as on the site."""
    text = README.read_text(encoding="utf-8")
    links = [target.split("#")[0] for target in re.findall(r"\]\(([^)\s]+)\)", text)
             if "://" not in target and not target.startswith("#")]
    assert links, "the README links to the documentation's pages"
    assert [link for link in links if not (ROOT / link).is_file()] == []
    pages = {p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").rglob("*.md")}
    assert pages - set(links) == set(), "every page is linked from the README"
