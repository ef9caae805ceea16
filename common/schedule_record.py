"""Early stopping's record, ``schedule.json`` in the sweep folder (issue 15 part 3): written by
sweep.scheduler, read there, by the sweep driver's commands (sweep.run, sweep.staging) and by
each trial's workers (sweep.trial_worker), which end their Train run once it names their trial.
Imports neither torch nor Ray (the trial driver stays light).

The record is::

    {"settings": {...the spec's schedule block...},
     "trials": {<trial>: {"sigma": σ, "rungs": {"1": {"epoch": E, "curve": {"0": a, ...}}}}},
     "stopped": {<trial>: {"why": "...", "rung": k, "epoch": E, "at": unix time}}}
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from common import layout


def stopped_entries(record: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    """The record's stopped trials, each with its entry (malformed entries left out)."""
    stopped = (record or {}).get("stopped")
    if not isinstance(stopped, Mapping):
        return {}
    return {str(name): dict(entry) for name, entry in stopped.items()
            if isinstance(entry, Mapping)}


def stopped_trials(sweep_dir: str | Path) -> dict[str, str]:
    """The trials the scheduler stopped, each with its reason, as the local copy of
    ``schedule.json`` says (empty when the sweep has no schedule or stopped none)."""
    entries = stopped_entries(layout.read_json(Path(sweep_dir) / layout.SCHEDULE))
    return {name: str(entry.get("why", "")) for name, entry in entries.items()}
