"""sweep.trial_states: a trial's state.json reconciled with the sweep driver's liveness and
with Ray Tune's record of it (read from Tune's experiment state without Ray)."""

from __future__ import annotations

import json

import pytest
from smoothadv.common import layout
from smoothadv.sweep.storage import open_sweep
from smoothadv.sweep.trial_states import (
    reconciled,
    settle_after_fit,
    settle_before_resume,
    tune_statuses,
    will_run,
)


@pytest.mark.parametrize("recorded,tune,running,expected", [
    ("RUNNING", "RUNNING", True, "RUNNING"),        # a live sweep: the record is the truth
    ("ERROR", "RUNNING", True, "ERROR"),            # Tune may retry it: shown as written
    (None, "PENDING", True, "PENDING"),
    ("RUNNING", "RUNNING", False, "INTERRUPTED"),    # its driver was killed
    ("RUNNING", None, False, "INTERRUPTED"),
    ("ERROR", "RUNNING", False, "INTERRUPTED"),      # written as the killed driver took it down
    ("ERROR", "PENDING", False, "INTERRUPTED"),
    ("ERROR", "ERROR", False, "ERROR"),
    ("ERROR", None, False, "ERROR"),                 # no Tune record to say otherwise
    ("RUNNING", "ERROR", False, "ERROR"),            # failed before its driver wrote ERROR
    (None, "ERROR", False, "ERROR"),
    (None, "PENDING", False, "PENDING"),             # queued, never started
    (None, None, False, "PENDING"),
    ("TERMINATED", "RUNNING", False, "TERMINATED"),  # finished as the driver died
    ("STOPPED", "RUNNING", False, "STOPPED"),
    ("INTERRUPTED", "PENDING", False, "INTERRUPTED"),
])
def test_reconciled_state(recorded, tune, running, expected):
    assert reconciled(recorded, tune, running) == expected


def write_states(folder, states):
    for name, state in states.items():
        layout.trial_dir(folder, name).mkdir(parents=True)
        layout.write_json(layout.trial_dir(folder, name) / layout.STATE,
                          {"state": state, "trial_id": name, "started_at": 1.0})


def states_of(folder, names):
    return {n: layout.read_json(layout.trial_dir(folder, n) / layout.STATE)["state"]
            for n in names}


def test_after_fit_trials_cut_short_are_interrupted_and_tunes_failures_errored(tmp_path):
    states = {"done": "TERMINATED", "failed": "ERROR", "killed": "ERROR", "running": "RUNNING",
              "failed_early": "RUNNING"}
    write_states(tmp_path, states)
    errored = {"failed": "ValueError: boom", "failed_early": "UserError: bad",
               "never_wrote": "UserError: worse"}
    names = [*states, "never_wrote"]
    assert settle_after_fit(open_sweep(tmp_path), errored, names) == 1
    # a later stage's experiment counts its own trials only (sweep.staged_sweep)
    assert settle_after_fit(open_sweep(tmp_path), errored, ["failed"]) == 0
    assert states_of(tmp_path, names) == {
        "done": "TERMINATED", "failed": "ERROR", "killed": "INTERRUPTED",
        "running": "INTERRUPTED", "failed_early": "ERROR", "never_wrote": "ERROR"}
    early = layout.read_json(layout.trial_dir(tmp_path, "failed_early") / layout.STATE)
    assert early == {"format_version": layout.RECORD_VERSION, "state": "ERROR",
                     "trial_id": "failed_early", "started_at": 1.0, "error": "UserError: bad"}


def tune_state(folder, statuses: dict[str, str], stamp: str = "2026-12-07_10-00-00"):
    """An experiment state file as Ray 2.60's Tune writes it (the fields read here)."""
    data = {"trial_data": [[json.dumps({"custom_trial_name": n, "status": s, "config": {}}),
                            "{}"] for n, s in statuses.items()],
            "runner_data": {}, "stats": {}}
    (folder / layout.TUNE).mkdir(parents=True, exist_ok=True)
    (folder / layout.TUNE / f"experiment_state-{stamp}.json").write_text(json.dumps(data))


def test_before_resume_records_follow_tune(tmp_path):
    states = {"done": "TERMINATED", "killed": "ERROR", "failed": "ERROR", "running": "RUNNING"}
    write_states(tmp_path, states)
    tune_state(tmp_path, {"done": "TERMINATED", "killed": "ERROR"}, "2026-12-07_09-00-00")
    tune_state(tmp_path, {"done": "TERMINATED", "killed": "RUNNING", "failed": "ERROR",
                          "running": "RUNNING", "queued": "PENDING"})  # the newest
    sweep = open_sweep(tmp_path)
    tune = tune_statuses(sweep, layout.TUNE)
    assert tune == {"done": "TERMINATED", "killed": "RUNNING", "failed": "ERROR",
                    "running": "RUNNING", "queued": "PENDING"}
    settle_before_resume(sweep, tune)
    assert states_of(tmp_path, states) == {"done": "TERMINATED", "killed": "INTERRUPTED",
                                           "failed": "ERROR", "running": "INTERRUPTED"}
    assert will_run({**states_of(tmp_path, states), "queued": "PENDING"}) == [
        "killed", "failed", "running", "queued"]


def test_an_unreadable_tune_record_is_no_record(tmp_path):
    (tmp_path / layout.TUNE).mkdir()
    (tmp_path / layout.TUNE / "experiment_state-x.json").write_text("{not json")
    assert tune_statuses(open_sweep(tmp_path), layout.TUNE) == {}
    assert tune_statuses(open_sweep(tmp_path), "tune-stage2") == {}
