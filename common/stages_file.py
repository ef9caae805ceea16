"""A staged sweep's record, ``stages.json`` (issue 15 part 1): its reading and its one-line
outcome, shared by the sweep driver (sweep.staged_sweep, which writes it), ``sweep status`` and
the benchmarks. Imports neither torch, Ray nor scipy (the trial driver stays light).

The record is ``{"stage": s, "trials": {<trial>: {"stage": reached, "why": reason}}}``: ``s``
is the stage running (1..LAST) or LAST + 1 once every stage is done; a trial with a reason
stopped at the stage it reached, one without went on (or is still going).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from smoothadv.common import layout
from smoothadv.common.records import corrupt, read_object, shown, whole

LAST = 3  # stage 1 screens, stage 2 certifies at full n, stage 3 re-certifies the winners
DONE = LAST + 1  # the record's "stage" once every stage is done
FIX = ("a staged sweep's record of its stages, written whole, so damaged: restore it (or "
       "remove it, and the sweep's stages start again from stage 1)")


def _problem(record: Mapping[str, Any]) -> str | None:
    if not whole(record.get("stage"), 1, DONE + 1):
        return f"stage: expected a stage 1 to {DONE}, got {shown(record.get('stage'))}"
    trials = record.get("trials", {})
    if not isinstance(trials, dict):
        return f"trials: expected a mapping of trial → entry, got {shown(trials)}"
    for name, entry in trials.items():
        if not isinstance(entry, dict):
            return f"trials.{name}: expected a mapping with stage and why, got {shown(entry)}"
        if not whole(entry.get("stage"), 1, DONE + 1):
            return (f"trials.{name}.stage: expected a stage 1 to {DONE}, got "
                    f"{shown(entry.get('stage'))}")
        if not isinstance(entry.get("why", ""), str):
            return f"trials.{name}.why: expected text, got {shown(entry.get('why'))}"
    return None


def read(sweep_dir: Path) -> dict[str, Any] | None:
    """The sweep's stages.json as {"stage", "trials"}; None when the sweep is not staged (or
    stage 1 has not begun). A record not as sweep.staged_sweep writes it is one UserError line
    naming the file (common.records)."""
    path = Path(sweep_dir) / layout.STAGES
    record = read_object(path, FIX)
    if record is None:
        return None
    problem = _problem(record)
    if problem is not None:
        raise corrupt(path, problem, FIX)
    return {"stage": record["stage"], "trials": dict(record.get("trials", {}))}


def trials(n: int) -> str:
    """"1 trial", "3 trials"."""
    return f"{n} trial{'' if n == 1 else 's'}"


def _by_stage(counts: Counter) -> list[tuple[Any, int]]:
    """(stage, count) pairs, integer stages in order first, anything malformed after."""
    return sorted(counts.items(), key=lambda item: (not isinstance(item[0], int),
                                                    item[0] if isinstance(item[0], int) else 0,
                                                    str(item[0])))


def stopped_counts(entries: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """"2 trials stopped at stage 1", … for the entries with a reason."""
    stopped = Counter(e.get("stage") for e in entries.values() if e.get("why"))
    return [f"{trials(n)} stopped at stage {s}" for s, n in _by_stage(stopped)]


def outcome(entries: Mapping[str, Mapping[str, Any]]) -> str:
    """Where every trial ended, once every stage is done: "2 trials certified through stage 3,
    1 trial stopped at stage 1"."""
    through = Counter(e.get("stage") for e in entries.values() if not e.get("why"))
    parts = [f"{trials(n)} certified through stage {s}" for s, n in _by_stage(through)]
    return ", ".join(parts + stopped_counts(entries)) or "no trials"
