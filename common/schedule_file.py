"""Early stopping's record, ``schedule.json`` in the sweep folder (issue 15 part 3): written by
sweep.early_stopping, read there, by the sweep driver's commands (sweep.lifecycle,
sweep.staged_sweep) and by each trial's workers (sweep.trial_worker), which end their Train run
once it names their trial. Imports neither torch nor Ray (the trial driver stays light).

The record is::

    {"settings": {...the spec's schedule block...},
     "trials": {<trial>: {"sigma": σ, "rungs": {"1": {"epoch": E, "curve": {"0": a, ...}}}}},
     "stopped": {<trial>: {"why": "...", "rung": k, "epoch": E, "at": unix time}}}
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from smoothadv.common import layout
from smoothadv.common.records import corrupt, finite, read_object, shown, whole

FIX = ("the early-stopping schedule's record, written whole, so damaged: restore it (or remove "
       "it, and the schedule judges the trials afresh)")


def stopped_entries(record: Any) -> dict[str, dict[str, Any]]:
    """The record's stopped trials, each with its entry; entries that are not a mapping with
    a reason (``why``, text) are left out, by every reader alike (a trial's workers read the
    record between epochs, and a malformed entry must not end their run)."""
    stopped = record.get("stopped") if isinstance(record, Mapping) else None
    if not isinstance(stopped, Mapping):
        return {}
    return {str(name): dict(entry) for name, entry in stopped.items()
            if isinstance(entry, Mapping) and isinstance(entry.get("why"), str)}


def _number_key(key: Any, kind: type) -> bool:
    try:
        value = kind(key)
    except (TypeError, ValueError, OverflowError):
        return False
    return math.isfinite(value) and value >= (1 if kind is int else 0)


def _trial_problem(name: str, entry: Any) -> str | None:
    where = f"trials.{name}"
    if not isinstance(entry, Mapping):
        return f"{where}: expected a mapping with sigma and rungs, got {shown(entry)}"
    if not (finite(entry.get("sigma")) and entry["sigma"] > 0):
        return f"{where}.sigma: expected a noise level > 0, got {shown(entry.get('sigma'))}"
    rungs = entry.get("rungs")
    if not isinstance(rungs, Mapping):
        return f"{where}.rungs: expected a mapping of rung → epoch and curve, got {shown(rungs)}"
    for k, rung in rungs.items():
        if not _number_key(k, int):
            return f"{where}.rungs: expected rung numbers ≥ 1 as keys, got {shown(k)}"
        if not isinstance(rung, Mapping) or not whole(rung.get("epoch"), 0):
            return f"{where}.rungs.{k}: expected a whole epoch ≥ 0 and a curve, got {shown(rung)}"
        curve = rung.get("curve")
        if not isinstance(curve, Mapping) or not all(
                _number_key(r, float) and isinstance(a, int | float) and not isinstance(a, bool)
                for r, a in curve.items()):
            return (f"{where}.rungs.{k}.curve: expected radius → certified accuracy, got "
                    f"{shown(curve)}")
    return None


def read_schedule(path: str | Path) -> dict[str, Any] | None:
    """The record at ``path`` as sweep.early_stopping writes it; None when there is none (no
    schedule, or no rung reported yet). A record of another shape is one UserError line
    naming the file (malformed ``stopped`` entries excepted: :func:`stopped_entries`)."""
    record = read_object(path, FIX)
    if record is None:
        return None
    trials = record.get("trials", {})
    if not isinstance(trials, Mapping):
        raise corrupt(path, f"trials: expected a mapping of trial → rungs, got {shown(trials)}",
                      FIX)
    problem = next((p for p in (_trial_problem(n, e) for n, e in trials.items()) if p), None)
    if problem is None and not isinstance(record.get("settings", {}), Mapping):
        problem = f"settings: expected a mapping, got {shown(record['settings'])}"
    if problem is None and not isinstance(record.get("stopped", {}), Mapping):
        problem = f"stopped: expected a mapping of trial → why, got {shown(record['stopped'])}"
    if problem is not None:
        raise corrupt(path, problem, FIX)
    return record


def stopped_trials(sweep_dir: str | Path) -> dict[str, str]:
    """The trials the scheduler stopped, each with its reason, as the local copy of
    ``schedule.json`` says (empty when the sweep has no schedule or stopped none)."""
    entries = stopped_entries(read_schedule(Path(sweep_dir) / layout.SCHEDULE))
    return {name: entry["why"] for name, entry in entries.items()}
