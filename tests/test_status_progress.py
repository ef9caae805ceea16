"""`sweep status` while trials certify: the rate and ETA columns, shards counted before their
merge, and a staged sweep's stage/why columns, stage-1 counting and stage line. The sweep
folders are written by hand (no Ray)."""

from __future__ import annotations

import datetime
import os
import socket
from pathlib import Path

from conftest import sweep_yaml
from smoothadv.common import layout
from smoothadv.sweep import processes
from smoothadv.sweep.status import (
    format_eta,
    format_rate,
    format_status,
    parse_durations,
    status_table,
)

SPEC = {"name": "tiny", "defaults": {"dataset": "synthetic", "arch": "lenet", "epochs": 1},
        "grid": {"sigma": [0.25, 0.5, 1.0]}}
TRIALS = ["sigma0.25", "sigma0.5", "sigma1"]
HEADER = "idx\tlabel\tpredict\tradius\tcorrect\ttime\tpA_lower\n"


def sweep_folder(tmp_path: Path, alive: bool = True) -> Path:
    folder = tmp_path / "tiny"
    folder.mkdir()
    (folder / layout.SPEC).write_text(sweep_yaml(SPEC))
    if alive:  # this process plays the driver, so RUNNING trials stay RUNNING
        layout.write_json(folder / layout.DRIVER,
                          {"pid": os.getpid(), "start": processes.start_time(os.getpid()),
                           "host": socket.gethostname()})
    return folder


def trial(folder: Path, name: str, state: str, planned: int | None = None,
          plan: str = layout.CERTIFY_PLAN) -> Path:
    tdir = layout.trial_dir(folder, name)
    tdir.mkdir(parents=True, exist_ok=True)
    layout.write_json(tdir / layout.STATE, {"state": state})
    if planned is not None:
        layout.write_json(tdir / plan, {"planned": planned})
    return tdir


def rows(path: Path, seconds: list[float], start: int = 0) -> None:
    """A certify TSV with one row per duration, ``time`` written as the runner writes it."""
    lines = [f"{start + i}\t1\t1\t0.5\t1\t{datetime.timedelta(seconds=s)}\t0.9\n"
             for i, s in enumerate(seconds)]
    path.write_text(HEADER + "".join(lines))


def row_of(table, name: str) -> dict:
    return table.set_index("trial").loc[name].to_dict()


def test_rate_and_eta_of_a_running_trial(tmp_path):
    """10 rows of 6 s each: 10 images a minute; 90 left of 100 → 9 minutes."""
    folder = sweep_folder(tmp_path)
    rows(trial(folder, "sigma0.25", "RUNNING", planned=100) / layout.CERTIFY, [6.0] * 10)
    row = row_of(status_table(folder)[0], "sigma0.25")
    assert (row["certified"], row["rate"], row["eta"]) == ("10/100", "10.0/min", "9m")
    line = next(ln for ln in format_status(folder).splitlines()
                if ln.lstrip().startswith("sigma0.25"))
    assert line.split() == ["sigma0.25", "RUNNING", "0/1", "10/100", "10.0/min", "9m"]
    header = format_status(folder).splitlines()[0].split()
    assert header == ["trial", "state", "epoch", "certified", "rate", "eta"]


def test_a_torn_last_line_is_neither_counted_nor_timed(tmp_path):
    folder = sweep_folder(tmp_path)
    path = trial(folder, "sigma0.25", "RUNNING", planned=100) / layout.CERTIFY
    rows(path, [6.0] * 10)
    with open(path, "a") as f:
        f.write("10\t1\t1\t0.5\t1\t0:00:0")  # a row cut while written: would read as 0 s
    row = row_of(status_table(folder)[0], "sigma0.25")
    assert (row["certified"], row["rate"], row["eta"]) == ("10/100", "10.0/min", "9m")


def test_shards_are_counted_and_their_rates_summed_before_the_merge(tmp_path):
    """Two ranks, each 10 rows of 6 s (10/min each): 20 done, 20/min across the workers, 80
    left → 4 minutes. Summing the durations over both files would give half the rate."""
    folder = sweep_folder(tmp_path)
    tdir = trial(folder, "sigma0.25", "RUNNING", planned=100)
    rows(tdir / layout.shard_name(layout.CERTIFY, 0, 2), [6.0] * 10)
    rows(tdir / layout.shard_name(layout.CERTIFY, 1, 2), [6.0] * 10, start=10)
    (tdir / layout.ATTACK).write_text(HEADER + "0\t1\t1\t0.5\t1\t0:00:06\t0.9\n")  # not a shard
    row = row_of(status_table(folder)[0], "sigma0.25")
    assert (row["certified"], row["rate"], row["eta"]) == ("20/100", "20.0/min", "4m")


def test_the_merged_file_wins_over_leftover_shards(tmp_path):
    folder = sweep_folder(tmp_path)
    tdir = trial(folder, "sigma0.25", "RUNNING", planned=100)
    rows(tdir / layout.CERTIFY, [6.0] * 30)
    rows(tdir / layout.shard_name(layout.CERTIFY, 0, 2), [6.0] * 10)
    row = row_of(status_table(folder)[0], "sigma0.25")
    assert (row["certified"], row["rate"], row["eta"]) == ("30/100", "10.0/min", "7m")


def test_only_running_trials_with_rows_and_a_plan_get_a_rate(tmp_path):
    folder = sweep_folder(tmp_path)
    rows(trial(folder, "sigma0.25", "TERMINATED", planned=10) / layout.CERTIFY, [6.0] * 10)
    rows(trial(folder, "sigma0.5", "RUNNING") / layout.CERTIFY, [6.0] * 10)  # no plan
    trial(folder, "sigma1", "RUNNING", planned=100)  # no row yet
    table = status_table(folder)[0]
    assert table["rate"].tolist() == ["", "", ""] and table["eta"].tolist() == ["", "", ""]
    assert table["certified"].tolist() == ["10/10", "10/?", "0/100"]
    assert format_status(folder).splitlines()[-1] == "3 trials: 2 running, 1 terminated"


def test_an_interrupted_trial_gets_no_eta(tmp_path):
    folder = sweep_folder(tmp_path, alive=False)  # no driver: RUNNING reads as INTERRUPTED
    rows(trial(folder, "sigma0.25", "RUNNING", planned=100) / layout.CERTIFY, [6.0] * 10)
    row = row_of(status_table(folder)[0], "sigma0.25")
    assert (row["state"], row["rate"], row["eta"]) == ("INTERRUPTED", "", "")


def test_formats():
    assert format_rate(10 / 60) == "10.0/min"
    assert format_rate(12.34 / 60) == "12.3/min"
    assert format_rate(0.5 / 3600) == "0.5/h"
    assert format_rate(30 / 3600) == "30.0/h"
    assert [format_eta(s) for s in (0, 59, 60, 45 * 60, 3 * 3600 + 12 * 60, 3600 - 1)] == [
        "<1m", "<1m", "1m", "45m", "3h12m", "1h00m"]
    assert parse_durations(["0:00:01.234567", "1 day, 0:00:01", "x"]).tolist()[:2] == [
        1.234567, 86401.0]


def staged_sweep(tmp_path: Path) -> Path:
    """Stage 2 of 3: two trials went on, one stopped at stage 1; sigma0.5 is still being
    screened (no certify.tsv, 5 of 20 stage-1 images), sigma1 certifies in full."""
    folder = sweep_folder(tmp_path)
    layout.write_json(folder / layout.STAGES, {"stage": 2, "trials": {
        "sigma0.25": {"stage": 1, "why": "below the sigma envelope"},
        "sigma0.5": {"stage": 2, "why": ""},
        "sigma1": {"stage": 2, "why": ""}}})
    t1 = trial(folder, "sigma0.25", "TERMINATED", planned=20, plan=layout.CERTIFY_STAGE1_PLAN)
    rows(t1 / layout.CERTIFY_STAGE1, [6.0] * 20)
    t2 = trial(folder, "sigma0.5", "RUNNING", planned=20, plan=layout.CERTIFY_STAGE1_PLAN)
    layout.write_json(t2 / layout.CERTIFY_PLAN, {"planned": 500})
    rows(t2 / layout.CERTIFY_STAGE1, [4.0] * 5)
    t3 = trial(folder, "sigma1", "RUNNING", planned=100)
    layout.write_json(t3 / layout.CERTIFY_STAGE1_PLAN, {"planned": 20})
    rows(t3 / layout.CERTIFY_STAGE1, [1.0] * 20)
    rows(t3 / layout.CERTIFY, [6.0] * 10)
    return folder


def test_a_staged_sweep_shows_stage_and_why(tmp_path):
    folder = staged_sweep(tmp_path)
    table = status_table(folder)[0].set_index("trial")
    assert table["stage"].tolist() == ["1", "2", "2"]
    assert table["why"].tolist() == ["below the sigma envelope", "", ""]
    lines = format_status(folder).splitlines()
    assert lines[0].split() == ["trial", "state", "stage", "epoch", "certified", "rate", "eta",
                                "why"]
    assert lines[1].rstrip().endswith("below the sigma envelope")
    assert lines[1].split()[:3] == ["sigma0.25", "TERMINATED", "1"]


def test_stage_one_rows_are_counted_until_the_full_certification_starts(tmp_path):
    folder = staged_sweep(tmp_path)
    table = status_table(folder)[0].set_index("trial")
    assert table["certified"].tolist() == ["20/20", "5/20", "10/100"]
    assert (table.loc["sigma0.5", "rate"], table.loc["sigma0.5", "eta"]) == ("15.0/min", "1m")
    assert (table.loc["sigma1", "rate"], table.loc["sigma1", "eta"]) == ("10.0/min", "9m")


def test_stage_one_files_count_only_in_a_staged_sweep(tmp_path):
    folder = staged_sweep(tmp_path)
    (folder / layout.STAGES).unlink()
    table = status_table(folder)[0].set_index("trial")
    assert "stage" not in table and not table["why"].astype(bool).any()
    assert table["certified"].tolist() == ["0/?", "0/500", "10/100"]


def test_the_stage_line_comes_before_the_unchanged_summary(tmp_path):
    folder = staged_sweep(tmp_path)
    lines = format_status(folder).splitlines()
    assert lines[-2] == "stage 2 of 3: 2 trials reached stage 2, 1 trial stopped at stage 1"
    assert lines[-1] == "3 trials: 2 running, 1 terminated"


def test_a_trial_stages_json_does_not_name_has_no_stage_and_no_why_column(tmp_path):
    folder = sweep_folder(tmp_path)
    layout.write_json(folder / layout.STAGES, {"stage": 1, "trials": {
        "sigma0.25": {"stage": 1, "why": ""}}})
    trial(folder, "sigma0.25", "RUNNING")
    lines = format_status(folder).splitlines()
    assert lines[0].split() == ["trial", "state", "stage", "epoch", "certified", "rate", "eta"]
    assert format_status(folder).splitlines()[2].split()[:3] == ["sigma0.5", "PENDING", "0/1"]
    assert lines[-2] == "stage 1 of 3: 1 trial reached stage 1, 2 trials not yet at stage 1"


def test_a_non_staged_sweep_has_no_stage_line(tmp_path):
    folder = sweep_folder(tmp_path)
    lines = format_status(folder).splitlines()
    assert "stage" not in lines[0] and len(lines) == 1 + len(TRIALS) + 1
