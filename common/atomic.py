"""Atomic file replacement: a reader sees the old file or the new one, never a torn one."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any


def atomic_write_bytes(path: str | Path, write: Any, keep_previous: Path | None = None) -> None:
    """Call ``write(file_object)`` on a temporary file beside ``path``, fsync, then rename.

    With ``keep_previous`` the file being replaced is first renamed there, once the new one is
    complete on disk: at every instant a complete newest or previous file exists. The file gets
    the permissions of any new file (0666 less the umask), not the temporary file's private 0600,
    so a group sharing the storage can read it. A failure (full or read-only disk) is an OSError
    naming ``path``, not the temporary file."""
    path = Path(path)
    try:
        _replace(path, write, keep_previous)
    except OSError as e:
        if e.filename == str(path):
            raise
        raise OSError(e.errno, e.strerror, str(path)) from e


def _replace(path: Path, write: Any, keep_previous: Path | None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o666 & ~_umask())
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if keep_previous is not None and path.exists():
            os.replace(path, keep_previous)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _umask() -> int:
    """The process umask (reading it means setting it; set straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
