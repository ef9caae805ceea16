"""What produced a result: the versions recorded beside trials and certification rows.

``software()`` needs no torch import (package metadata and ``git``), so the light trial driver
can call it; ``provenance()`` adds the hardware facts of the process that ran the work (CUDA and
cuDNN versions, the GPU model) when torch is already loaded there.
"""

from __future__ import annotations

import functools
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = ("smoothadv", "torch", "torchvision", "ray")


@functools.cache
def git_revision() -> str | None:
    """The checkout's commit (with ``+dirty`` when it has uncommitted changes), or None when
    smoothadv is not run from a git checkout."""
    root = Path(__file__).resolve().parents[1]
    if not (root / ".git").exists():
        return None
    try:
        rev = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain",
                                "--untracked-files=no"], capture_output=True, text=True,
                               timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{rev}+dirty" if dirty else rev


def version() -> str:
    """smoothadv's version, with its git revision when run from a checkout."""
    try:
        v = metadata.version("smoothadv")
    except metadata.PackageNotFoundError:
        v = "unknown"
    rev = git_revision()
    return f"{v} (git {rev})" if rev else v


@functools.cache
def software() -> dict[str, Any]:
    """Installed versions of smoothadv and the libraries it runs on, Python's, and the git
    revision; read from package metadata without importing them."""
    out: dict[str, Any] = {"python": sys.version.split()[0]}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    out["git_revision"] = git_revision()
    return out


def hardware() -> dict[str, Any]:
    """CUDA and cuDNN versions torch was built with and the GPU model, when torch is loaded in
    this process (an empty dict otherwise: this module never imports torch itself)."""
    torch = sys.modules.get("torch")
    if torch is None:
        return {}
    cuda = torch.cuda.is_available()
    return {"cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if cuda else None,
            "gpu": torch.cuda.get_device_name() if cuda else None}


def provenance() -> dict[str, Any]:
    """software() and hardware() together: the record written beside a result."""
    return {**software(), **hardware()}
