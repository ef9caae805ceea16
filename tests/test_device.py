"""One device helper: trainers.device.resolve_device is the only code that decides "auto"."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from smoothadv.trainers.device import resolve_device

ROOT = Path(__file__).resolve().parents[1]


def test_auto_is_cuda_when_available_else_cpu(monkeypatch):
    for available, want in ((True, "cuda"), (False, "cpu")):
        monkeypatch.setattr(torch.cuda, "is_available", lambda available=available: available)
        assert resolve_device("auto") == torch.device(want)
        assert resolve_device(None) == torch.device(want)


def test_a_named_device_is_taken_as_is():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


def test_no_other_module_picks_cuda_when_available():
    """(Asking whether a GPU is there for another purpose, e.g. to name it, is fine.)"""
    choice = re.compile(r"""["']cuda["']\s+if\s+(torch\.)?cuda\.is_available\(\)""")
    users = sorted(str(path.relative_to(ROOT))
                   for package in ("common", "trainers", "certify", "sweep", "analysis")
                   for path in (ROOT / package).rglob("*.py")
                   if choice.search(path.read_text(encoding="utf-8")))
    assert users == ["trainers/device.py"]
