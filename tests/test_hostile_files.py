"""Hostile files in a sweep folder (it lives on shared file systems and in buckets): each is
refused in one line naming the file (and the line, in a line-per-record file), never a
traceback and never silently misread; what is legitimately absent stays absent, and a torn
last line of an append-only file stays ignored."""

from __future__ import annotations

import json
import os
import re
import socket
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from conftest import sweep_yaml
from smoothadv.certify.results_file import ResultsFile
from smoothadv.cli.main import main
from smoothadv.common import layout
from smoothadv.common.errors import UserError
from smoothadv.common.schedule_file import stopped_entries, stopped_trials
from smoothadv.sweep import processes

SPEC = {"name": "tiny", "defaults": {"dataset": "synthetic", "arch": "lenet", "epochs": 2},
        "grid": {"sigma": [0.25, 0.5]}}
TRIAL = "sigma0.25"
CERTIFY_HEADER = "idx\tlabel\tpredict\tradius\tcorrect\ttime\tpA_lower\n"


def refused(capsys, argv: list[str], path: Path, *words: str) -> str:
    """Run the command: exit 2 with one stderr line naming ``path`` (and ``words``)."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("smoothadv: error: "), err
    assert str(path) in lines[0], err
    for word in words:
        assert word in lines[0], err
    return lines[0]


def versioned(record):
    """A JSON record as the tool writes it: with its format version (common.layout)."""
    return {"format_version": layout.RECORD_VERSION, **record} if isinstance(record, dict) \
        else record


def versioned_text(text: str) -> str:
    """``text`` with the format version inserted when it opens a JSON object."""
    return text.replace("{", f'{{"format_version": {layout.RECORD_VERSION}, ', 1) \
        if text.startswith("{") else text


# --- sweep status -------------------------------------------------------------------------


def sweep_folder(tmp_path: Path, driver: bool = True) -> Path:
    """A sweep folder as written by hand (test_status_progress): its spec, this process as its
    live driver (RUNNING trials stay RUNNING), one trial that ran two epochs."""
    folder = tmp_path / "tiny"
    tdir = layout.trial_dir(folder, TRIAL)
    tdir.mkdir(parents=True)
    (folder / layout.SPEC).write_text(sweep_yaml(SPEC))
    if driver:
        layout.write_json(folder / layout.DRIVER,
                          {"pid": os.getpid(), "start": processes.start_time(os.getpid()),
                           "host": socket.gethostname()})
    layout.write_json(tdir / layout.STATE, {"state": "TERMINATED", "trial_id": "t1",
                                            "started_at": 1.0, "ended_at": 2.0})
    (tdir / layout.METRICS).write_text('{"epoch": 0, "train_loss": 1.0}\n'
                                       '{"epoch": 1, "train_loss": NaN}\n')
    return folder


def status_line(capsys, folder: Path) -> list[str]:
    assert main(["sweep", "status", str(folder)]) == 0
    out = capsys.readouterr().out.splitlines()
    return next(line for line in out if line.lstrip().startswith(TRIAL)).split()


@pytest.mark.parametrize("text", [
    '{"state": 5}', '{"state": "DONE"}', '{"error": "boom"}', '["TERMINATED"]', "TERMINAT",
    '{"state": "TERMINATED", "ended_at": "yesterday"}', '{"state": "ERROR", "error": 7}',
    b"\x89PNG\r\n\x1a\n\x00\xff", ""], ids=["number", "unknown", "no-state", "list", "text",
                                           "time", "error", "binary", "empty"])
def test_a_damaged_state_record_is_refused_naming_it(tmp_path, capsys, text):
    """state.json is written whole (atomically): present but not a record is damage, never a
    trial that has not started (PENDING) or was cut short (INTERRUPTED)."""
    folder = sweep_folder(tmp_path)
    path = layout.trial_dir(folder, TRIAL) / layout.STATE
    path.write_bytes(text if isinstance(text, bytes) else versioned_text(text).encode())
    refused(capsys, ["sweep", "status", str(folder)], path, "remove it")


def test_a_missing_state_record_is_a_trial_not_started(tmp_path, capsys):
    folder = sweep_folder(tmp_path, driver=False)
    (layout.trial_dir(folder, TRIAL) / layout.STATE).unlink()
    assert status_line(capsys, folder)[:3] == [TRIAL, "PENDING", "2/2"]


@pytest.mark.parametrize("text, line", [
    ('{"epoch": "two"}\n', 1),
    ('{"epoch": 0}\nnot json\n{"epoch": 1}\n', 2),
    ('{"epoch": 0}\n{"loss": 1.0}\n', 2),
    ('{"epoch": 0}\n{"epoch": -1}\n', 2),
    ('{"epoch": 0}\n{"epoch": 1.5}\n', 2),
    ('{"epoch": 0}\n[1]\n', 2),
    (b'{"epoch": 0}\n\xff\xfe{"epoch": 1}\n', 2),
], ids=["text-epoch", "not-json", "no-epoch", "negative", "fraction", "list", "binary"])
def test_a_complete_metrics_line_that_is_no_record_is_refused_naming_its_line(tmp_path, capsys,
                                                                            text, line):
    folder = sweep_folder(tmp_path)
    path = layout.trial_dir(folder, TRIAL) / layout.METRICS
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    refused(capsys, ["sweep", "status", str(folder)], path, f"line {line}:")


@pytest.mark.parametrize("tail, epochs", [
    ('{"epoch": 2, "train_lo', "2/2"),  # torn by a kill mid-line: ignored
    ("\xff", "2/2"),
    ('{"epoch": 2}', "3/2"),  # whole, only its newline missing: counted, as before
    ("\n\n", "2/2"),  # blank lines
])
def test_a_torn_last_metrics_line_is_still_ignored(tmp_path, capsys, tail, epochs):
    folder = sweep_folder(tmp_path)
    with open(layout.trial_dir(folder, TRIAL) / layout.METRICS, "a", encoding="utf-8") as f:
        f.write(tail)
    assert status_line(capsys, folder)[:3] == [TRIAL, "TERMINATED", epochs]


@pytest.mark.parametrize("data, words", [
    (b"name: [\n", ["malformed YAML"]),
    (b"\x00\x01\xff\xfe garbage", []),
    (b"name: tiny\x10\ngrid: {sigma: [0.25]}\n", []),  # a control character
    (b"- 1\n- 2\n", ["expected a mapping"]),
    (sweep_yaml({"name": "tiny"}).encode(), ["grid"]),
    (sweep_yaml({"name": "tiny", "grid": {"sigma": [0.25]}, "defaults": {"epochs": -3}})
     .encode(), ["epochs"]),
    (sweep_yaml(SPEC).replace("  workers: 1\n", "").encode(), ["resources", "workers"]),
], ids=["unparsable", "binary", "control", "list", "no-grid", "bad-default", "resources"])
def test_a_damaged_sweep_yaml_is_refused_naming_it(tmp_path, capsys, data, words):
    folder = sweep_folder(tmp_path)
    (folder / layout.SPEC).write_bytes(data)
    refused(capsys, ["sweep", "status", str(folder)], folder / layout.SPEC, *words)


@pytest.mark.parametrize("planned", ["1e400", "-3", '"ten"', "1.5", "1e30", "null"])
def test_a_damaged_plan_is_refused_naming_it(tmp_path, capsys, planned):
    """An infinite plan once crashed the ETA (OverflowError); others were shown as given."""
    folder = sweep_folder(tmp_path)
    tdir = layout.trial_dir(folder, TRIAL)
    layout.write_json(tdir / layout.STATE, {"state": "RUNNING"})
    (tdir / layout.CERTIFY).write_text(CERTIFY_HEADER + "0\t1\t1\t0.5\t1\t0:00:06\t0.9\n")
    (tdir / layout.CERTIFY_PLAN).write_text(versioned_text(f'{{"planned": {planned}}}'))
    refused(capsys, ["sweep", "status", str(folder)], tdir / layout.CERTIFY_PLAN, "planned")


@pytest.mark.parametrize("record", [
    [1, 2], {"pid": "x", "start": 1, "host": "h"}, {"pid": 1, "start": 1},
    {"pid": 1, "start": 1, "host": "h", "heartbeat": "now"},
    {"pid": 1, "start": 1, "host": "h", "ray_processes": [[1]]}])
def test_a_damaged_driver_record_is_refused_naming_it(tmp_path, capsys, record):
    """Once read as "no driver runs" (or, from another host, as a live one)."""
    folder = sweep_folder(tmp_path)
    (folder / layout.DRIVER).write_text(json.dumps(versioned(record)))
    refused(capsys, ["sweep", "status", str(folder)], folder / layout.DRIVER, "no driver runs")


@pytest.mark.parametrize("record", [
    {"stage": "x", "trials": {}}, {"stage": 2, "trials": [1]}, {"stage": 9, "trials": {}},
    {"stage": 2, "trials": {TRIAL: {"stage": 1, "why": 5}}},
    {"stage": 2, "trials": {TRIAL: "stopped"}}, {"trials": {}}])
def test_a_damaged_stage_record_is_refused_naming_it(tmp_path, capsys, record):
    folder = sweep_folder(tmp_path)
    (folder / layout.STAGES).write_text(json.dumps(versioned(record)))
    refused(capsys, ["sweep", "status", str(folder)], folder / layout.STAGES)


@pytest.mark.parametrize("found", [2, None, "1", True])
@pytest.mark.parametrize("name", [layout.STATE, layout.CERTIFY_PLAN, layout.DRIVER,
                                  layout.STAGES, layout.SPEC])
def test_a_record_of_another_format_is_refused_naming_both_versions(tmp_path, capsys, name,
                                                                    found):
    """Every record a sweep writes carries its format version; another (or none) is one line
    naming the file, the version found and the one this smoothadv reads, before its content
    is trusted."""
    folder = sweep_folder(tmp_path)
    tdir = layout.trial_dir(folder, TRIAL)
    path = {layout.STATE: tdir, layout.CERTIFY_PLAN: tdir}.get(name, folder) / name
    good = {layout.STATE: {"state": "RUNNING"}, layout.CERTIFY_PLAN: {"planned": 4},
            layout.DRIVER: json.loads(path.read_text()) if name == layout.DRIVER else None,
            layout.STAGES: {"stage": 1, "trials": {}},
            layout.SPEC: yaml.safe_load(sweep_yaml(SPEC))}[name]
    layout.write_json(path, {k: v for k, v in good.items() if k != "format_version"})
    assert main(["sweep", "status", str(folder)]) == 0  # as written: read
    capsys.readouterr()
    record = {**good, "format_version": found} if found is not None else \
        {k: v for k, v in good.items() if k != "format_version"}
    path.write_text(yaml.safe_dump(record) if name == layout.SPEC else json.dumps(record))
    err = refused(capsys, ["sweep", "status", str(folder)], path)
    assert f"{path}: format_version {found!r}, this smoothadv reads 1" in err


# --- sweep resume: what it reads before Ray starts ----------------------------------------


@pytest.fixture
def no_ray(monkeypatch):
    """A resume that gets as far as starting Ray read the damaged file as valid."""
    from smoothadv.sweep import lifecycle as sweep_run

    def started(*args, **kwargs):
        raise AssertionError("Ray started: the damaged file was read as valid")

    monkeypatch.setattr(sweep_run, "init_ray", started)


@pytest.mark.parametrize("damage", ["state", "spec"])
def test_resume_refuses_a_damaged_folder_before_ray_starts(tmp_path, capsys, no_ray, damage):
    folder = sweep_folder(tmp_path, driver=False)
    path = (layout.trial_dir(folder, TRIAL) / layout.STATE if damage == "state"
            else folder / layout.SPEC)
    path.write_bytes(b'{"state": 5}' if damage == "state" else b"\xff\xfe: [")
    refused(capsys, ["sweep", "resume", str(folder)], path)


def test_the_readers_resume_calls_refuse_before_anything_starts(tmp_path):
    from smoothadv.sweep.status import read_sweep_spec
    from smoothadv.sweep.trial_states import recorded_states

    folder = sweep_folder(tmp_path, driver=False)
    assert recorded_states(folder, [TRIAL, "sigma0.5"]) == {TRIAL: "TERMINATED",
                                                            "sigma0.5": None}
    assert [t.name for t in read_sweep_spec(folder).trials()] == [TRIAL, "sigma0.5"]
    state = layout.trial_dir(folder, TRIAL) / layout.STATE
    state.write_text(versioned_text('{"state": 5}'))
    with pytest.raises(UserError, match=re.escape(str(state))):
        recorded_states(folder, [TRIAL])
    (folder / layout.SPEC).write_bytes(b"\xff")
    with pytest.raises(UserError, match=re.escape(str(folder / layout.SPEC))):
        read_sweep_spec(folder)


# --- analyze --------------------------------------------------------------------------------


def analyzed_sweep(tmp_path: Path, rows: list[str], *, sigma: float = 0.5,
                   attack: str | None = None) -> Path:
    """A sweep of one certified trial (as test_analysis writes them), ``rows`` its results."""
    root = tmp_path / "s"
    tdir = layout.trial_dir(root, "x")
    tdir.mkdir(parents=True)
    (root / layout.SPEC).write_text("name: s\ngrid: {sigma: [0.5]}\n")
    (tdir / layout.TRIAL_INFO).write_text(json.dumps(versioned({"name": "x",
                                                                 "params": {"sigma": sigma}})))
    (tdir / layout.CONFIG).write_text(json.dumps({"dataset": "cifar10", "sigma": sigma,
                                                  "certify": {"alpha": 0.001}}))
    (tdir / layout.CERTIFY).write_text(CERTIFY_HEADER + "".join(r + "\n" for r in rows))
    layout.write_json(tdir / layout.CERTIFY_PLAN, {"planned": len(rows)})
    (tdir / (layout.CERTIFY + layout.META)).write_text(json.dumps(
        {"format_version": layout.META_FORMAT_VERSION, "sigma": sigma, "alpha": 0.001,
         "n0": 100, "n": 1000, "dataset": "cifar10"}))
    if attack is not None:
        (tdir / layout.ATTACK).write_text(attack)
    return root


GOOD = ["0\t0\t0\t0.8\t1\t0:00:01\t0.9", "1\t1\t-1\t0.0\t0\t0:00:01\t0.4",
        "2\t2\t3\t0.3\t0\t0:00:01\t0.7"]


def analyze(root: Path, tmp_path: Path) -> list[str]:
    return ["analyze", str(root), "-o", str(tmp_path / "report")]


@pytest.mark.parametrize("name", [layout.TRIAL_INFO, layout.CERTIFY + layout.META,
                                  layout.CERTIFY_PLAN])
def test_analyze_refuses_a_record_of_another_format(tmp_path, capsys, name):
    root = analyzed_sweep(tmp_path, GOOD)
    path = layout.trial_dir(root, "x") / name
    path.write_text(json.dumps({**json.loads(path.read_text()), "format_version": 2}))
    err = refused(capsys, analyze(root, tmp_path), path)
    assert f"{path}: format_version 2, this smoothadv reads 1" in err


def test_valid_rows_are_analyzed(tmp_path, capsys):
    root = analyzed_sweep(tmp_path, GOOD)
    assert main(analyze(root, tmp_path)) == 0
    assert "1 trials certified" in capsys.readouterr().out


@pytest.mark.parametrize("row, words", [
    ("3\t3\t3\tinf\t1\t0:00:01\t0.9", ["radius"]),
    ("3\t3\t3\t-5\t1\t0:00:01\t0.9", ["radius", "≥ 0"]),
    ("3\t3\t3\t0.5\t7\t0:00:01\t0.9", ["correct", "0 or 1"]),
    ("3\t3\t3\t0.5\t0\t0:00:01\t0.9", ["correct", "predict equals label"]),
    ("3\t3\t-1\t0.5\t0\t0:00:01\t0.4", ["abstention"]),
    ("3\t3\t-2\t0.0\t0\t0:00:01\t0.4", ["predict"]),
    ("3\t1.5\t3\t0.5\t0\t0:00:01\t0.9", ["label"]),
    ("-1\t3\t3\t0.5\t1\t0:00:01\t0.9", ["idx"]),
    ("2.5\t3\t3\t0.5\t1\t0:00:01\t0.9", ["idx"]),
    ("1\t3\t3\t0.5\t1\t0:00:01\t0.9", ["idx 1 appears twice"]),
    ("3\t3\t3\t9.5\t1\t0:00:01\t0.9", ["radius", "σ=0.5", "trial.json"]),  # > 8.3σ
    ("3\t3\t3\t0.5\t1\t0:00:01\t0.9\textra", ["fields"]),
], ids=["inf", "negative", "correct-7", "inconsistent", "abstain-radius", "predict-2",
        "label-fraction", "idx-negative", "idx-fraction", "idx-twice", "radius-beyond-sigma",
        "extra-field"])
def test_a_bad_results_row_is_refused_naming_its_file_and_line(tmp_path, capsys, row, words):
    root = analyzed_sweep(tmp_path, [*GOOD, row])
    path = layout.trial_dir(root, "x") / layout.CERTIFY
    refused(capsys, analyze(root, tmp_path), path, "line 5", *words)
    assert not (tmp_path / "report").exists()


def test_a_torn_last_results_line_is_still_ignored(tmp_path, capsys):
    root = analyzed_sweep(tmp_path, GOOD)
    with open(layout.trial_dir(root, "x") / layout.CERTIFY, "a") as f:
        f.write("3\t3\t3\tinf\t7")
    assert main(analyze(root, tmp_path)) == 0
    assert "torn last line" in capsys.readouterr().out


ATTACK_HEADER = "idx\tlabel\tepsilon\tpredict\tcorrect\ttime\n"


@pytest.mark.parametrize("row, words", [
    ("0\t0\tinf\t0\t1\t0:00:02", ["epsilon"]),
    ("0\t0\t0.5\t0\t7\t0:00:02", ["correct"]),
    ("0\t0\t0.25\t0\t1\t0:00:02", ["appears twice"]),
    ("0\t0\t-0.5\t0\t1\t0:00:02", ["epsilon"]),
])
def test_a_bad_attack_row_is_refused_naming_its_file_and_line(tmp_path, capsys, row, words):
    attack = ATTACK_HEADER + "0\t0\t0.25\t0\t1\t0:00:02\n" + row + "\n"
    root = analyzed_sweep(tmp_path, GOOD, attack=attack)
    refused(capsys, analyze(root, tmp_path), layout.trial_dir(root, "x") / layout.ATTACK,
            "line 3", *words)


@pytest.mark.parametrize("name, value, words", [
    (layout.CERTIFY + layout.META, {"sigma": "x"}, ["sigma"]),
    (layout.CERTIFY + layout.META, {"target_radius": "big"}, ["target_radius"]),
    (layout.CERTIFY + layout.META, {"alpha": 7}, ["alpha"]),
    (layout.CERTIFY + layout.META, {"dataset": ["cifar10"]}, ["dataset"]),
    (layout.TRIAL_INFO, {"name": 5}, ["name"]),
    (layout.TRIAL_INFO, {"params": {"sigma": "x"}}, ["sigma"]),
    (layout.TRIAL_INFO, {"params": {"sigma": 0.5, "steps": 10**30}}, ["steps"]),
    (layout.TRIAL_INFO, {"params": {"sigma": -0.5}}, ["sigma"]),
    (layout.CONFIG, {"certify": 5}, ["certify"]),
    (layout.CONFIG, {"dataset": [1]}, ["dataset"]),
    (layout.CONFIG, {"certify": {"alpha": "x"}}, ["alpha"]),
    (layout.CERTIFY_PLAN, {"planned": 10**30}, ["planned"]),
])
def test_a_record_of_the_wrong_types_is_refused_naming_it(tmp_path, capsys, name, value,
                                                          words):
    root = analyzed_sweep(tmp_path, GOOD)
    path = layout.trial_dir(root, "x") / name
    record = json.loads(path.read_text()) if path.exists() else {}
    path.write_text(json.dumps({**record, **value}))
    refused(capsys, analyze(root, tmp_path), path, *words)


@pytest.mark.parametrize("record", [{"stage": 2, "trials": []},
                                    {"stage": 2, "trials": {"x": {"stage": "one"}}}])
def test_analyze_refuses_a_damaged_stage_record(tmp_path, capsys, record):
    root = analyzed_sweep(tmp_path, GOOD)
    (root / layout.STAGES).write_text(json.dumps(versioned(record)))
    refused(capsys, analyze(root, tmp_path), root / layout.STAGES)


def test_a_trial_name_twice_names_both_records(tmp_path, capsys):
    root = analyzed_sweep(tmp_path, GOOD)
    other = layout.trial_dir(root, "y")
    other.mkdir()
    info = layout.trial_dir(root, "x") / layout.TRIAL_INFO
    (other / layout.TRIAL_INFO).write_text(info.read_text())
    refused(capsys, analyze(root, tmp_path), other / layout.TRIAL_INFO, "appears twice", str(info))


# --- a resumed certification (certify.results_file) ---------------------------------------


COLUMNS = ("idx", "label", "predict", "radius", "correct", "time", "pA_lower")
SETTINGS = {"sigma": 0.5, "n0": 10, "n": 100, "alpha": 0.001}


def results(tmp_path: Path, rows: str | bytes, meta: object = SETTINGS) -> Path:
    path = tmp_path / "out.tsv"
    data = rows if isinstance(rows, bytes) else rows.encode()
    path.write_bytes("\t".join(COLUMNS).encode() + b"\n" + data)
    if isinstance(meta, dict):
        meta = {"format_version": layout.META_FORMAT_VERSION, **meta}
    layout.meta_path(path).write_text(json.dumps(meta))
    return path


@pytest.mark.parametrize("recorded, asked, words", [
    ({**SETTINGS, "compiled": True}, SETTINGS, "compiled=True, which this run does not set"),
    (SETTINGS, {**SETTINGS, "compiled": False}, "has no compiled"),
    ({**SETTINGS, "sequential": False}, {**SETTINGS, "sequential": True}, "sequential=False"),
])
def test_a_setting_on_one_side_only_is_refused(tmp_path, recorded, asked, words):
    """A resume compares every setting both ways: one the record holds and the run does not
    set (or the reverse) is refused, never read as a default."""
    path = results(tmp_path, "0\t0\t0\t0.5\t1\t0:00:01\t0.9\n", recorded)
    before = path.read_bytes()
    with pytest.raises(UserError, match=re.escape(words)) as refusal:
        ResultsFile(path, COLUMNS, asked)
    assert "\n" not in str(refusal.value) and path.read_bytes() == before


@pytest.mark.parametrize("meta", [[1, 2], "settings", {**SETTINGS, "provenance": 5}])
def test_resuming_with_a_damaged_settings_record_is_refused_naming_it(tmp_path, meta):
    path = results(tmp_path, "0\t0\t0\t0.5\t1\t0:00:01\t0.9\n", meta)
    with pytest.raises(UserError, match=re.escape(str(layout.meta_path(path)))):
        ResultsFile(path, COLUMNS, SETTINGS, provenance={"smoothadv": "test"})


@pytest.mark.parametrize("row, words", [
    (b"1\t0\t0\tinf\t1\t0:00:01\t0.9\n", "radius"),
    (b"1\t0\t0\t0.5\t7\t0:00:01\t0.9\n", "correct"),
    (b"1\t0\t\xff\xfe\t0.5\t1\t0:00:01\t0.9\n", "UTF-8"),
    (b"0\t0\t0\t0.5\t1\t0:00:01\t0.9\n", "appears twice"),
], ids=["inf", "correct-7", "binary", "twice"])
def test_resuming_a_results_file_with_a_bad_row_is_refused_naming_its_line(tmp_path, row,
                                                                           words):
    path = results(tmp_path, b"0\t0\t0\t0.5\t1\t0:00:01\t0.9\n" + row)
    with pytest.raises(UserError, match=re.escape(f"{path}: line 3")) as refusal:
        ResultsFile(path, COLUMNS, SETTINGS)
    assert words in str(refusal.value) and "\n" not in str(refusal.value)


def test_resuming_valid_rows_and_a_torn_line_still_works(tmp_path):
    path = results(tmp_path, "0\t0\t0\t0.5\t1\t0:00:01\t0.9\n1\t1\t-1\t0.0\t0\t0:00:0")
    with ResultsFile(path, COLUMNS, SETTINGS) as out:
        assert out.done == {0} and out.repaired_torn_line


# --- the schedule's record (sweep.early_stopping) ----------------------------------------------


@pytest.mark.parametrize("text", ["not json", '{"trials": []}',
                                  '{"trials": {"a": {"sigma": "x", "rungs": {}}}}',
                                  '{"trials": {"a": {"sigma": 0.5, "rungs": {"1": {"epoch": '
                                  '1, "curve": {"r": 0.5}}}}}}', '{"stopped": 5}'])
def test_a_damaged_schedule_record_is_refused_naming_it(tmp_path, text):
    from smoothadv.sweep.early_stopping import EnvelopeScheduler
    from smoothadv.sweep.spec_blocks import EarlyStopping

    (tmp_path / layout.SCHEDULE).write_text(versioned_text(text))
    with pytest.raises(UserError, match=re.escape(str(tmp_path / layout.SCHEDULE))):
        stopped_trials(tmp_path)
    scheduler = EnvelopeScheduler(str(tmp_path), EarlyStopping(min_trials=2).record())
    trial = SimpleNamespace(trial_id="t", config={"trial": {"name": "t",
                                                            "config": {"sigma": 0.5}}})
    with pytest.raises(UserError, match=re.escape(str(tmp_path / layout.SCHEDULE))):
        scheduler.on_trial_result(SimpleNamespace(get_trials=lambda: []), trial,
                                  {"epoch": 0, "proxy_rung": 1, "proxy_cert_acc_0": 0.5})


def test_a_trials_workers_read_any_schedule_record_without_failing():
    """sweep.trial_worker reads the record between epochs: what is not a record stops
    nothing (the sweep driver refuses it, above)."""
    assert stopped_entries([1, 2]) == {} and stopped_entries("x") == {}
    assert stopped_entries({"stopped": {"a": {"why": 5}, "b": {"why": "dominated"}}}) == {
        "b": {"why": "dominated"}}


# --- a pre-training sweep (init_from_sweep) -------------------------------------------------


def test_a_damaged_pretraining_sweep_is_refused_naming_the_file(tmp_path):
    from smoothadv.sweep.pretrained import pretrained_checkpoints, pretraining_spec
    from smoothadv.sweep.spec import parse_spec

    folder = sweep_folder(tmp_path, driver=False)
    state = layout.trial_dir(folder, TRIAL) / layout.STATE
    state.write_text('{"state": "FINISHED"}')
    with pytest.raises(UserError, match=re.escape(str(state))):
        pretrained_checkpoints(folder, parse_spec(SPEC).trials())
    (folder / layout.SPEC).write_bytes(b"\xff\xfe")
    with pytest.raises(UserError, match=re.escape(str(folder / layout.SPEC))):
        pretraining_spec(folder)
