"""The local Ray processes a sweep driver started, recorded so that they can be ended when the
driver dies without cleaning up (SIGKILL, OOM, a lost terminal). Reads Linux's /proc; where
there is none, nothing is recorded and ``ray stop`` remains the way to clean up."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

Process = tuple[int, int]  # (pid, start time in clock ticks since boot): a pid cannot be reused
                           # by another process with the same start time


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time) of ``pid``, or None when it is gone (or a zombie)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rfind(")") + 2:].split()  # the command name may hold spaces
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[1]), int(fields[19])


def descendants(pid: int) -> list[Process]:
    """Every living process below ``pid`` in the process tree."""
    children: dict[int, list[int]] = {}
    starts: dict[int, int] = {}
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else []:
        if entry.name.isdigit() and (stat := _stat(int(entry.name))) is not None:
            children.setdefault(stat[0], []).append(int(entry.name))
            starts[int(entry.name)] = stat[1]
    found, todo = [], list(children.get(pid, []))
    while todo:
        child = todo.pop()
        found.append((child, starts[child]))
        todo += children.get(child, [])
    return found


def start_time(pid: int) -> int:
    stat = _stat(pid)
    return -1 if stat is None else stat[1]


def alive(process: Process) -> bool:
    stat = _stat(process[0])
    return stat is not None and stat[1] == process[1]


def end(processes: list[Process], grace_s: float = 5.0) -> int:
    """SIGTERM the still-living ``processes`` and their descendants, SIGKILL whatever is left
    after ``grace_s``; returns how many were ended."""
    targets = {p for p in processes if alive(p)}
    for pid, _ in list(targets):
        targets |= set(descendants(pid))
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid, start in targets:
            if alive((pid, start)):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and any(alive(p) for p in targets):
            time.sleep(0.1)
    return len(targets)


def _command_line(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def is_ray(process: Process) -> bool:
    """Whether a living ``process`` is one of Ray's: its command line names Ray (gcs_server,
    raylet, ray::… workers, Ray's agents and monitors all live under ray/ or call themselves
    ray::)."""
    return alive(process) and b"ray" in _command_line(process[0])


def is_sweep_driver(process: Process) -> bool:
    """Whether a living ``process`` runs smoothadv's command line (``smoothadv …`` or
    ``python -m smoothadv.cli.main …``)."""
    line = _command_line(process[0])
    return alive(process) and b"smoothadv" in line
