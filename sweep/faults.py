"""Fault injection for the reliability tests: real failures at chosen points of a trial.

``SMOOTHADV_FAULTS`` holds ``point:value:trial:marker_dir`` entries separated by ``;``. At
``maybe_fail(point, value, trial)`` a matching entry raises :class:`InjectedFault` once (the
marker file ``marker_dir/<point>-<value>-<trial>`` records that it fired), so a retried or
resumed trial then runs through. Points named ``kill_…`` SIGKILL the calling process instead
of raising (a worker process dying for real); points named ``hold_…`` park it until something
kills it (a trial held at a known epoch while a test stops the sweep). Unset in normal use; the
check costs one lookup.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path


class InjectedFault(RuntimeError):
    """Raised on purpose by a test through SMOOTHADV_FAULTS."""


def _entries() -> list[tuple[str, str, str, str]]:
    """SMOOTHADV_FAULTS as (point, value, trial, marker_dir) entries ([] when unset)."""
    spec = os.environ.get("SMOOTHADV_FAULTS")
    return [tuple((entry.split(":", 3) + ["", "", ""])[:4]) for entry in spec.split(";")] \
        if spec else []


def armed(point: str, trial: str) -> bool:
    """Whether SMOOTHADV_FAULTS names ``point`` for ``trial`` (fired or not)."""
    return any((name, target) == (point, trial) for name, _, target, _ in _entries())


def maybe_fail(point: str, value: object, trial: str) -> None:
    for name, wanted, target, marker_dir in _entries():
        if (name, wanted, target) != (point, str(value), trial):
            continue
        marker = Path(marker_dir) / f"{point}-{value}-{trial}"
        try:
            marker.parent.mkdir(parents=True, exist_ok=True)
            with open(marker, "x"):
                pass
        except FileExistsError:
            continue
        if point.startswith("kill_"):
            os.kill(os.getpid(), signal.SIGKILL)
        while point.startswith("hold_"):
            time.sleep(1)
        raise InjectedFault(f"injected fault at {point}={value} (SMOOTHADV_FAULTS)")
