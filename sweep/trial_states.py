"""What each trial's state.json says, kept true to what runs and to what Ray Tune recorded.

A trial's driver writes RUNNING when it starts and TERMINATED, STOPPED (the schedule), ERROR
or INTERRUPTED when it ends; a SIGKILLed sweep driver ends none of them, so its trials keep
saying RUNNING. The record is reconciled (:func:`reconciled`) with the sweep driver's liveness
and with Tune's own record of the trial (its experiment state, read here without Ray): by
``sweep status`` when it shows the table, by ``sweep resume`` before Tune starts (written to
disk), and by the sweep driver after Tune returns. A trial is ERROR only when Tune saw it fail:
a record that says ERROR while Tune's says the trial was still running was written as the
sweep driver died (its Train run went down with it), and is INTERRUPTED.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path

from smoothadv.common import layout
from smoothadv.common.records import read_state

FINISHED = ("TERMINATED", "STOPPED")
EXPERIMENT_STATE = "experiment_state-"  # Tune's restore point: experiment_state-<time>.json


def reconciled(recorded: str | None, tune: str | None, driver_running: bool) -> str:
    """A trial's state from its state.json's (``recorded``, None: none written), Tune's status
    of it (``tune``: PENDING, RUNNING, PAUSED, TERMINATED or ERROR; None: Tune has no record
    of it) and whether the sweep's driver runs."""
    if driver_running:
        return recorded or "PENDING"
    if recorded in FINISHED:
        return recorded
    if tune == "ERROR" or (recorded == "ERROR" and tune is None):
        return "ERROR"
    return "PENDING" if recorded is None else "INTERRUPTED"


def _newest_state(sweep, tune_dir: str) -> bytes | None:
    """The newest experiment_state-*.json of the Tune experiment ``tune_dir`` (relative to the
    sweep), from the bucket when there is one."""
    if sweep.remote is not None:
        names = [rel for rel, _, _ in sweep.remote.stamped_files(tune_dir, recursive=False)
                 if rel.startswith(EXPERIMENT_STATE)]
        return sweep.remote.read_bytes(f"{tune_dir}/{max(names)}") if names else None
    paths = sorted((sweep.local / tune_dir).glob(f"{EXPERIMENT_STATE}*.json"))
    return paths[-1].read_bytes() if paths else None


def tune_statuses(sweep, tune_dir: str) -> dict[str, str]:
    """Tune's status of each trial, by trial name, as the experiment ``tune_dir`` last saved
    it ({} when it saved none or it cannot be read). Ray 2.60's experiment state is JSON:
    ``trial_data`` lists [the trial's state as a JSON string, its run metadata]; the state
    holds ``custom_trial_name`` (sweep.param_space.trial_name) and ``status``."""
    try:
        data = _newest_state(sweep, tune_dir)
        trials = json.loads(data)["trial_data"] if data else []
        out = {}
        for entry in trials:
            state = json.loads(entry[0])
            out[str(state["custom_trial_name"])] = str(state["status"])
        return out
    except (OSError, ValueError, KeyError, TypeError, IndexError, RecursionError):
        return {}


def recorded_states(folder: Path, names: Iterable[str]) -> dict[str, str | None]:
    """Each trial's state as its state.json records it (None: no record, the trial has not
    started); a damaged record is one UserError line naming it (common.records.read_state).
    Read before anything starts, so that a resume refuses such a sweep before Ray does."""
    return {name: (read_state(layout.trial_dir(folder, name) / layout.STATE) or {}).get("state")
            for name in names}


def settle_before_resume(sweep, tune: Mapping[str, str]) -> None:
    """Before a resume (no driver runs: the resuming one holds the sweep's lock), write each
    trial's reconciled state where it differs from its record."""
    for path in sorted((sweep.local / layout.TRIALS).glob(f"*/{layout.STATE}")):
        record = read_state(path) or {}
        now = reconciled(record.get("state"), tune.get(path.parent.name), False)
        if now != record.get("state"):
            _write(sweep, path, record, now)


def settle_after_fit(sweep, errored: Mapping[str, str], names: Iterable[str]) -> int:
    """After Tune returns: a trial the schedule stopped (schedule.json, sweep.early_stopping) is
    STOPPED with the reason, whatever its driver wrote as Tune ended it; a trial Tune saw fail
    (``errored``: name → first line of its error) is ERROR; any other trial recorded ERROR or
    RUNNING was cut short by the sweep being stopped (its Train run dies with the Ray actors)
    and is INTERRUPTED, never ERROR (``--restart-errored`` would discard its progress).
    Returns how many of ``names`` (the trials this Tune experiment ran) finished."""
    from smoothadv.common.schedule_file import stopped_trials
    from smoothadv.sweep.early_stopping import write_stopped

    sweep.pull(under=layout.TRIALS, only=(layout.STATE,))  # as trial drivers anywhere wrote
    halted = stopped_trials(sweep.local)
    names = set(names)
    finished = 0
    for path in (sweep.local / layout.TRIALS).glob(f"*/{layout.STATE}"):
        name = path.parent.name
        if name in halted:
            write_stopped(sweep, path, halted[name])
        record = read_state(path) or {}
        state = record.get("state")
        finished += state in FINISHED and name in names
        if name in errored and state not in FINISHED and state != "ERROR":
            _write(sweep, path, record, "ERROR", errored[name])
        elif state in ("ERROR", "RUNNING") and name not in errored:
            _write(sweep, path, record, "INTERRUPTED")
    for name in names & set(errored):  # failed before it wrote any record
        path = layout.trial_dir(sweep.local, name) / layout.STATE
        if not path.exists():
            _write(sweep, path, {}, "ERROR", errored[name])
    return finished


def _write(sweep, path: Path, record: Mapping, state: str, error: str | None = None) -> None:
    kept = {k: record[k] for k in ("trial_id", "started_at", "ended_at") if k in record}
    if state == "ERROR":
        kept["error"] = error or record.get("error", "")
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep.write_json(path, {"state": state, **kept})


def will_run(states: Mapping[str, str]) -> list[str]:
    """The trials a ``sweep resume`` runs, from their reconciled states: every trial not
    finished (an ERROR one resumes from its checkpoint; ``--restart-errored`` restarts it)."""
    return [name for name, state in states.items() if state not in FINISHED]
