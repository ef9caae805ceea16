"""Atomic report files: readers see the old file or the whole new one."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from smoothadv.common.atomic import atomic_write_bytes


def write_atomic(path: str | Path, write: Callable[[BinaryIO], object]) -> Path:
    atomic_write_bytes(path, write)
    return Path(path)


def write_text(path: str | Path, text: str) -> Path:
    return write_atomic(path, lambda f: f.write(text.encode("utf-8")))
