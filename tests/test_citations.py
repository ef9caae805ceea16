"""The repository cites only what it holds: no file outside ``docs/`` points at notes kept
outside the repository; facts worth keeping live in ``docs/reference-facts.md``."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Split so that this file does not match itself.
OUTSIDE = ("REFERENCE" + ".md", "../" + "shared")


def _repository_files() -> list[str]:
    """Tracked files and new ones not ignored: what a commit of this checkout would hold."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    out = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others",
                          "--exclude-standard"], capture_output=True, check=True).stdout
    return sorted({name for name in out.decode().split("\0") if name})


def test_no_file_outside_docs_cites_what_the_repository_does_not_hold():
    bad = []
    for name in _repository_files():
        path = ROOT / name
        if name.startswith("docs/") or not path.is_file() or path.is_symlink():
            continue
        text = path.read_bytes().decode("utf-8", errors="replace")
        bad += [f"{name} cites {needle}" for needle in OUTSIDE if needle in text]
    assert not bad, bad


def test_the_facts_page_exists():
    assert (ROOT / "docs" / "reference-facts.md").is_file()
