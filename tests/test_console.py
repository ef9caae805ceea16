"""The sweep's compact console (sweep.console), driven with stand-ins for Tune's trials: no Ray
started. The real thing runs in tests/test_sweep_ray.py's tiny sweep."""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
from smoothadv.cli.main import build_parser
from smoothadv.common import layout
from smoothadv.sweep import experiment
from smoothadv.sweep.console import ConsoleReporter, duration, error_line
from smoothadv.sweep.signing_callback import TuneStateSigner

STAMP = re.compile(r"^\d\d:\d\d:\d\d ")


def trial(name="pgd-sigma0.25", trial_id="a1b2c_00001", epochs=3, stage=None, **gridded):
    """A stand-in for Tune's Trial: its config is Tune's record of the trial (sweep.param_space)."""
    gridded = gridded or {"attack": "pgd", "sigma": 0.25}
    config = {"trial": {"name": name, **gridded, "config": {"epochs": epochs, "sigma": 0.25}}}
    if stage:
        config["stage"] = stage
    return SimpleNamespace(trial_id=trial_id, config=config, status="RUNNING", error_file=None,
                           run_metadata=SimpleNamespace(num_failures=0))


def epoch(n, **more):
    return {"epoch": n, "train_loss": 2.30258, "train_acc": 0.109375, "test_acc_noisy": 0.125,
            "epoch_seconds": 8.21, "training_iteration": n + 1, "config": {}, **more}


FINAL = {"cert_acc_0": 0.375, "cert_acc_0.25": 0.25, "cert_acc_0.5": 0.125, "acr": 0.2134,
         "abstain": 0.1, "certified_images": 8, "attack_acc_0.25": 0.25, "config": {}}


def lines(capsys) -> list[str]:
    out = capsys.readouterr().out.splitlines()
    assert all(STAMP.match(line) for line in out), out
    return [STAMP.sub("", line) for line in out]


def test_a_trial_prints_its_start_epochs_and_end(tmp_path, capsys):
    console, t = ConsoleReporter(str(tmp_path)), trial()
    console.on_trial_start(iteration=1, trials=[t], trial=t)
    for n in range(3):
        console.on_trial_result(iteration=2, trials=[t], trial=t, result=epoch(n))
    console.on_trial_result(iteration=3, trials=[t], trial=t, result=FINAL)
    console.on_trial_result(iteration=3, trials=[t], trial=t, result={**FINAL, "done": True})
    console.on_trial_complete(iteration=4, trials=[t], trial=t)
    out = lines(capsys)
    assert out[0] == "start  pgd-sigma0.25  attack=pgd  sigma=0.25"
    # epoch 1 printed, epoch 2 within every_s of it left out, the last epoch always printed
    assert out[1] == ("pgd-sigma0.25  epoch 1/3  loss 2.303  acc 0.109  noisy acc 0.125  8.2 s")
    assert out[2].startswith("pgd-sigma0.25  epoch 3/3  loss")
    assert re.fullmatch(r"done  pgd-sigma0\.25  TERMINATED after [\d.]+ s  acr 0\.213  "
                        r"cert 0\.375@0 0\.250@0\.25 0\.125@0\.5  attack 0\.250@0\.25", out[3])
    assert len(out) == 4


def test_every_epoch_prints_when_epochs_are_slower_than_every_s(tmp_path, capsys):
    console, t = ConsoleReporter(str(tmp_path), every_s=0), trial()
    for n in range(3):
        console.on_trial_result(iteration=1, trials=[t], trial=t, result=epoch(n))
    console.on_trial_result(iteration=1, trials=[t], trial=t, result={**epoch(2), "done": True})
    assert [line.split("  ")[1] for line in lines(capsys)] == ["epoch 1/3", "epoch 2/3",
                                                               "epoch 3/3"]


def test_a_rung_prints_the_proxy_even_within_every_s(tmp_path, capsys):
    console, t = ConsoleReporter(str(tmp_path)), trial(epochs=10)
    console.on_trial_result(iteration=1, trials=[t], trial=t, result=epoch(0))
    console.on_trial_result(iteration=1, trials=[t], trial=t, result=epoch(
        1, proxy_rung=1, **{"proxy_cert_acc_0.5": 0.1, "proxy_cert_acc_0.25": 0.3}))
    out = lines(capsys)
    assert out[1].endswith("proxy cert 0.300@0.25 0.100@0.5 (rung 1)")


def test_staged_trial_shows_its_stage_and_an_unknown_record_its_id(tmp_path, capsys):
    console = ConsoleReporter(str(tmp_path))
    t = trial(stage=2)
    console.on_trial_start(iteration=1, trials=[t], trial=t)
    odd = SimpleNamespace(trial_id="x_1", config={"lr": 0.1}, status="RUNNING")
    console.on_trial_start(iteration=1, trials=[odd], trial=odd)
    console.on_trial_complete(iteration=1, trials=[odd], trial=odd)
    assert lines(capsys) == ["start  pgd-sigma0.25  attack=pgd  sigma=0.25  stage=2",
                             "start  x_1", "done  x_1  TERMINATED after 0.0 s"]


def test_an_error_shows_the_recorded_root_cause_else_tunes_last_exception_line(tmp_path,
                                                                                capsys):
    console = ConsoleReporter(str(tmp_path))
    recorded, unrecorded = trial(), trial(name="ddn-sigma0.25", trial_id="a1b2c_00002")
    state = layout.trial_dir(tmp_path, "pgd-sigma0.25") / layout.STATE
    state.parent.mkdir(parents=True)
    state.write_text(json.dumps({"state": "ERROR", "error": "RuntimeError: injected fault"}))
    error_file = tmp_path / "error.txt"
    error_file.write_text("Failure # 1 (occurred at 2026-12-07_19-00-00)\n"
                          "ray::ImplicitFunc.train() (pid=12, ip=127.0.0.1)\n"
                          '  File "x.py", line 3, in f\n    raise ValueError("no")\n'
                          "ray.train.TrainingFailedError: Training failed: 1 worker failed\n")
    unrecorded.error_file = str(error_file)
    recorded.path = "/sweeps/s/tune/pgd-sigma0.25"  # Tune's folder of the trial
    for t in (recorded, unrecorded):
        console.on_trial_start(iteration=1, trials=[t], trial=t)
        console.on_trial_error(iteration=2, trials=[t], trial=t)
    out = lines(capsys)
    assert re.fullmatch(r"done  pgd-sigma0\.25  ERROR after [\d.]+ s: RuntimeError: injected "
                        r"fault", out[1])
    assert out[2] == "pgd-sigma0.25: its traceback is in /sweeps/s/tune/pgd-sigma0.25/error.txt"
    assert out[4].endswith(": ray.train.TrainingFailedError: Training failed: 1 worker failed")
    assert len(out) == 5


def test_a_retried_trial_says_retry_then_restart(tmp_path, capsys):
    console, t = ConsoleReporter(str(tmp_path)), trial()
    console.on_trial_start(iteration=1, trials=[t], trial=t)
    console.on_trial_result(iteration=2, trials=[t], trial=t, result=epoch(0))
    t.run_metadata.num_failures = 1
    console.on_trial_recover(iteration=3, trials=[t], trial=t)
    console.on_trial_start(iteration=4, trials=[t], trial=t)
    out = lines(capsys)
    assert out[2] == "retry  pgd-sigma0.25 (failure 1): see `smoothadv sweep status`"
    assert out[3].startswith("restart  pgd-sigma0.25  ")


def test_a_trial_the_schedule_stopped_says_why(tmp_path, capsys):
    console, t = ConsoleReporter(str(tmp_path)), trial()
    state = layout.trial_dir(tmp_path, "pgd-sigma0.25") / layout.STATE
    state.parent.mkdir(parents=True)
    state.write_text(json.dumps({"state": "STOPPED", "why": "below the envelope at rung 1"}))
    console.on_trial_complete(iteration=1, trials=[t], trial=t)
    assert lines(capsys) == ["done  pgd-sigma0.25  STOPPED: below the envelope at rung 1"]


def test_a_quiet_stretch_prints_the_counts_once(tmp_path, capsys):
    console = ConsoleReporter(str(tmp_path), quiet_s=0)
    trials = [trial(trial_id=f"t{i}") for i in range(4)]
    trials[1].status, trials[2].status, trials[3].status = "PENDING", "TERMINATED", "ERROR"
    console.on_step_end(iteration=1, trials=trials)
    console.on_trial_result(iteration=1, trials=trials, trial=trials[0], result=epoch(2))
    console.on_step_end(iteration=1, trials=trials)
    for t in trials[:2]:
        t.status = "TERMINATED"
    console.on_step_end(iteration=2, trials=trials)  # nothing runs or waits: no line
    assert lines(capsys)[::2] == ["1 running, 1 pending, 1 terminated, 1 error",
                                  "1 running (1 certifying), 1 pending, 1 terminated, 1 error"]
    ConsoleReporter(str(tmp_path)).on_step_end(iteration=1, trials=trials[:1])
    assert lines(capsys) == []  # not quiet for QUIET_S yet


def test_it_never_raises(tmp_path, monkeypatch, capsys):
    """A closed terminal or a trial of another shape fails no sweep."""
    console, t = ConsoleReporter(str(tmp_path)), trial()

    class Closed:
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self):
            raise BrokenPipeError(32, "Broken pipe")

    with monkeypatch.context() as m:
        m.setattr("sys.stdout", Closed())
        console.on_trial_start(iteration=1, trials=[t], trial=t)
        console.on_trial_complete(iteration=1, trials=[t], trial=t)
    for hook in ("on_trial_start", "on_trial_complete", "on_trial_error", "on_trial_recover"):
        getattr(console, hook)(iteration=1, trials=[None], trial=None)
    console.on_trial_result(iteration=1, trials=[t], trial=t, result={"epoch": "one"})
    console.on_trial_result(iteration=1, trials=[t], trial=t, result=None)
    console.on_step_end(iteration=1, trials=[object()])
    capsys.readouterr()


def test_it_pickles_its_settings_only(tmp_path, capsys):
    """Tune stores its callbacks in its restore point (tuner.pkl)."""
    console, t = ConsoleReporter(str(tmp_path), every_s=5.0, quiet_s=7.0), trial()
    console.on_trial_start(iteration=1, trials=[t], trial=t)
    console.on_trial_result(iteration=1, trials=[t], trial=t, result=epoch(0))
    copy = pickle.loads(pickle.dumps(console))
    assert (copy.sweep_dir, copy.every_s, copy.quiet_s) == (str(tmp_path), 5.0, 7.0)
    assert copy._started == {} and copy._epoch == {}
    copy.on_trial_start(iteration=1, trials=[t], trial=t)  # a fresh start, not a restart
    assert lines(capsys)[-1].startswith("start  pgd-sigma0.25")


def test_verbose_picks_tunes_reporting_or_ours(tmp_path):
    parse = build_parser().parse_args
    assert parse(["sweep", "run", "s.yaml"]).verbose == 0
    assert parse(["sweep", "run", "s.yaml", "--verbose"]).verbose == 2
    assert parse(["sweep", "resume", "d", "--verbose", "1"]).verbose == 1
    assert parse(["sweep", "resume", "--verbose", "0", "d"]).verbose == 0
    with pytest.raises(SystemExit):
        parse(["sweep", "run", "s.yaml", "--verbose", "3"])
    sweep = SimpleNamespace(local=Path(tmp_path))
    [ours] = experiment.console(sweep, 0)
    assert isinstance(ours, ConsoleReporter) and ours.sweep_dir == str(tmp_path)
    assert experiment.console(sweep, 2) == []
    tracker = object()
    signer = TuneStateSigner(sweep, "tune")
    assert experiment.without_ours([ours, tracker, signer]) == [tracker]


def test_tune_prints_nothing_at_verbose_0_and_its_own_otherwise(monkeypatch):
    """Ray 2.60's legacy output engine (RAY_AIR_NEW_OUTPUT=0) is silent at verbosity 0; its
    new one prints tables at any; Tune's INFO lines and its list of failed trials are left
    out, its warnings kept; no traceback per failed trial (TUNE_PRINT_ALL_TRIAL_ERRORS)."""
    monkeypatch.setenv("RAY_AIR_NEW_OUTPUT", "1")
    monkeypatch.delenv("TUNE_PRINT_ALL_TRIAL_ERRORS", raising=False)
    log, seen = logging.getLogger("ray.tune.tune"), []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: seen.append(record.getMessage())
    level = log.level
    log.setLevel(logging.INFO)
    log.addHandler(handler)
    try:
        with experiment.tune_output(0):
            assert {k: os.environ[k] for k in experiment.QUIET_TUNE} == experiment.QUIET_TUNE
            log.info("Wrote the latest version of all result files")
            log.error("Trials did not complete: %s", ["pgd-sigma0.25"])
            log.warning("a warning")
        with experiment.tune_output(2):
            assert os.environ["RAY_AIR_NEW_OUTPUT"] == "1"
            log.info("shown")
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
    assert seen == ["a warning", "shown"]
    assert os.environ["RAY_AIR_NEW_OUTPUT"] == "1"
    assert not any(logging.getLogger(name).filters for name in experiment.TUNE_LOGS)
    assert "TUNE_PRINT_ALL_TRIAL_ERRORS" not in os.environ


def test_helpers():
    assert [duration(s) for s in (3.21, 42, 185, 7380)] == ["3.2 s", "42 s", "3m05s", "2h03m"]
    assert error_line("header\n  File x\nKeyError: 'a'\n  more\n") == "KeyError: 'a'"
    assert error_line("just text\n") == "just text"
    assert error_line("") == "(no error text)"
