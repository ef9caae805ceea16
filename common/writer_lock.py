"""One writer at a time: an exclusive OS file lock (``flock``) on an empty file beside what is
written.

The kernel releases the lock when its holder dies however it dies (SIGKILL included), so a
dead holder's lock is taken over by the next writer at once; the file itself stays (removing
it would let two writers lock two different files of the same name). It stays empty, so it
takes no space on a disk that is filling up; a refusal names the holder as the kernel lists
it (/proc/locks: its pid, then its command line). ``flock`` works on local disks and on NFSv4
(Linux emulates it with byte-range locks there). Imports neither torch nor Ray.
"""

from __future__ import annotations

import fcntl
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from smoothadv.common.errors import UserError


def lock_path(target: Path) -> Path:
    """The lock file of ``target`` (a file or a folder): ``.<name>.lock`` beside it."""
    return target.parent / f".{target.name}.lock"


def holder(path: Path) -> int | None:
    """The pid of the process on this machine holding the flock of ``path`` (None when the
    kernel lists none: the holder is on another machine, or gone)."""
    try:
        st = path.stat()
        listed = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return None
    device = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    for line in listed:
        fields = line.split()
        if len(fields) > 5 and fields[1] == "FLOCK" and fields[5] == device:
            return int(fields[4])
    return None


def holder_line(path: Path) -> str:
    """Who holds the lock at ``path``: "pid N on HOST: COMMAND" ("" when unknown)."""
    pid = holder(path)
    if pid is None:
        return ""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        command = " ".join(a.decode(errors="replace") for a in argv if a)[:200]
    except OSError:
        command = "?"
    return f"pid {pid} on {socket.gethostname()}: {command}"


@contextmanager
def exclusive(path: Path, what: str) -> Iterator[None]:
    """Hold the lock file ``path`` while the block runs; refuse in one line (a UserError
    naming ``what`` and the holder) when another process holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            who = holder_line(path)
            raise UserError(f"{what}: another process is writing it"
                            + (f" ({who})" if who else "")
                            + "; wait until it ends or stop it") from None
        yield
    finally:
        os.close(fd)  # releases the lock
