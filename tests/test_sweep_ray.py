"""Sweeps through real local Ray: every trial trains, certifies and reports; a failed trial is
resumed from its checkpoint by ``sweep resume``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import FAULT_TRIAL, KILL_TRIAL, RESTART_TRIAL
from smoothadv.cli.main import main
from smoothadv.common import layout
from smoothadv.common.errors import UserError
from smoothadv.sweep import trust
from smoothadv.sweep.storage import open_sweep

TINY_DEFAULTS = {
    "dataset": "synthetic", "arch": "lenet", "train_subset": 128, "epoch_test_subset": 64,
    "epochs": 1, "batch_size": 64, "lr": 0.05, "warmup_epochs": 1, "steps": 1,
    "epsilon": 0.25, "device": "cpu",
    "certify": {"n0": 16, "n": 100, "batch_size": 100, "skip": 64},  # 8 of 512 test images
}


def run_spec(tmp_path: Path, spec: dict, *extra: str) -> tuple[int, Path]:
    path = tmp_path / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec))
    code = main(["sweep", "run", str(path), "--storage", str(tmp_path), *extra])
    return code, tmp_path / spec["name"]


def metrics_lines(trial_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (trial_dir / "metrics.jsonl").read_text().splitlines()]


def test_tiny_sweep_trains_and_certifies_every_trial(local_ray, tmp_path, capfd):
    """More trials than the 2-CPU cluster holds and no --max-concurrent, as a new user runs it:
    the default bound runs 2 at a time (never more drivers alive at once), so no trial's
    workers queue for CPUs; start_timeout_s bounds how long they could. The console shows
    smoothadv's compact lines (sweep.console), not Tune's tables."""
    spec = {"name": "tiny", "defaults": TINY_DEFAULTS,
            "resources": {"workers": 1, "cpus_per_worker": 1, "start_timeout_s": 8},
            "attack_eval": {"epsilons": [0.25], "steps": 2, "m_test": 4, "n": 50,
                            "skip": 128},
            "grid": [{"method": ["gaussian"], "sigma": [0.25]},
                     {"attack": ["pgd", "ddn"], "sigma": [0.25]}]}
    code, sweep_dir = run_spec(tmp_path, spec)
    assert code == 0
    printed = capfd.readouterr()  # stdout and stderr, as the terminal shows them
    console = printed.out + printed.err
    assert "tiny: 3 trials, at most 2 at once" in printed.out
    assert len(console.splitlines()) <= 60, console
    for name in ("gaussian-sigma0.25", "pgd-sigma0.25", "ddn-sigma0.25"):
        start, epoch, done = (next((line for line in console.splitlines() if what in line), "")
                              for what in (f"start  {name}  ", f"{name}  epoch 1/1  ",
                                           f"done  {name}  TERMINATED"))
        assert "sigma=0.25" in start and "loss " in epoch, console
        assert " acr " in done and " cert " in done and "@0.25" in done, console
    assert "Trial status" not in console and "Configuration for experiment" not in console
    spans = [json.loads((t / layout.STATE).read_text())
             for t in (sweep_dir / layout.TRIALS).iterdir()]
    events = sorted([(s["started_at"], 1) for s in spans] + [(s["ended_at"], -1) for s in spans])
    alive = [sum(step for _, step in events[:i + 1]) for i in range(len(events))]
    assert max(alive) == 2  # two at once, never three
    for name in ("gaussian-sigma0.25", "pgd-sigma0.25", "ddn-sigma0.25"):
        trial = layout.trial_dir(sweep_dir, name)
        rows = pd.read_csv(trial / layout.CERTIFY, sep="\t")
        assert list(rows["idx"]) == list(range(0, 512, 64))
        assert rows["samples"].between(16, 116).all()  # sequential: n0 = 16, n = 100
        attacked = pd.read_csv(trial / layout.ATTACK, sep="\t")
        assert list(attacked["idx"]) == [0, 128, 256, 384]
        assert set(attacked["epsilon"]) == {0.25}
        assert json.loads((trial / layout.TRIAL_INFO).read_text())["name"] == name
        assert json.loads((trial / layout.STATE).read_text())["state"] == "TERMINATED"
        assert [m["epoch"] for m in metrics_lines(trial)] == [0]
        # Tune sees the grid as plain data (sweep.param_space): the trial's record holds its
        # gridded values and the config it trained; TensorBoard's HParams show them
        tune_trial = sweep_dir / layout.TUNE / name
        record = json.loads((tune_trial / "params.json").read_text())["trial"]
        gridded = {"sigma": 0.25, **({"method": "gaussian"} if name.startswith("gaussian")
                                    else {"attack": name[:3]})}
        assert {k: v for k, v in record.items() if k != "config"} == {"name": name, **gridded}
        assert record["config"]["steps"] == 1 and record["config"]["sigma"] == 0.25
        hparams = hparams_of(tune_trial)
        assert {f"trial/{k}": v for k, v in gridded.items()}.items() <= hparams.items()
        assert hparams["trial/name"] == name and hparams["trial/config/steps"] == 1
        # Tune's TensorBoard log of the trial, with the final certification metrics
        assert list(tune_trial.glob("events.out.tfevents.*"))
        results = [json.loads(line) for line in (tune_trial / "result.json").open()]
        assert {"acr", "cert_acc_0.25", "attack_acc_0.25"} <= set(results[-1])
    from ray.tune import ExperimentAnalysis, ResultGrid

    table = ResultGrid(ExperimentAnalysis(str(sweep_dir / layout.TUNE))).get_dataframe()
    assert sorted(table["config/trial/name"]) == sorted(
        ["gaussian-sigma0.25", "pgd-sigma0.25", "ddn-sigma0.25"])
    assert set(table["config/trial/sigma"]) == {0.25}
    assert sorted(table["config/trial/attack"].dropna()) == ["ddn", "pgd"]
    capfd.readouterr()
    assert main(["sweep", "status", str(sweep_dir)]) == 0
    out = capfd.readouterr().out.splitlines()
    assert out[-1] == "3 trials: 3 terminated"
    assert all("8/8" in line for line in out[1:-2])
    assert out[-2] == "every trial finished: `sweep resume` has nothing to run"
    # docs/guide/sweeps.md's `tensorboard --logdir STORAGE/NAME/tune`, with TensorBoard installed
    board = subprocess.run([str(Path(sys.executable).parent / "tensorboard"), "--inspect",
                            "--logdir", str(sweep_dir / layout.TUNE)], capture_output=True,
                           text=True, timeout=120)
    assert "ray/tune/acr" in board.stdout and "pgd-sigma0.25" in board.stdout, board.stderr
    # the driver signed every file of Tune's restore point as Tune wrote it (sweep.trust):
    # `sweep resume` would hand it to Ray; one changed byte, and it would not
    sweep = open_sweep(sweep_dir)
    trust.verify_tune_state(sweep, layout.TUNE)
    state = next((sweep_dir / layout.TUNE).glob("experiment_state-*.json"))
    state.write_bytes(state.read_bytes().replace(b"TERMINATED", b"TERMINATEd", 1))
    with pytest.raises(UserError, match=f"{state.name}: not signed by your smoothadv key"):
        trust.verify_tune_state(sweep, layout.TUNE)
    # the sweep's Tune ResultGrid (smoothadv.sweep.result_grid): refused while Tune's state is
    # not as the driver signed it; as signed, one row per trial with its certified accuracy
    from smoothadv.sweep import result_grid

    with pytest.raises(UserError, match=f"{state.name}: not signed by your smoothadv key"):
        result_grid(sweep_dir)
    state.write_bytes(state.read_bytes().replace(b"TERMINATEd", b"TERMINATED", 1))
    grid = result_grid(str(sweep_dir))
    frame = grid.get_dataframe()
    assert sorted(frame["config/trial/name"]) == sorted(
        ["gaussian-sigma0.25", "pgd-sigma0.25", "ddn-sigma0.25"])
    assert frame["cert_acc_0.25"].between(0, 1).all() and grid.num_errors == 0


def hparams_of(tune_trial: Path) -> dict:
    """The HParams (name → value) Tune's TensorBoard logger wrote for a finished trial."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    found = {}
    for path in sorted(tune_trial.glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                if value.tag == "_hparams_/session_start_info":
                    info = HParamsPluginData.FromString(value.metadata.plugin_data.content)
                    for key, v in info.session_start_info.hparams.items():
                        found[key] = getattr(v, v.WhichOneof("kind"))
    return found


def test_a_trial_larger_than_the_local_cluster_is_refused(local_ray, tmp_path, capsys):
    spec = {"name": "huge", "defaults": TINY_DEFAULTS, "grid": {"sigma": [0.25]},
            "resources": {"workers": 3, "cpus_per_worker": 1}}
    code, sweep_dir = run_spec(tmp_path, spec)
    assert code == 2
    assert "resources: one trial needs 3 CPUs" in capsys.readouterr().err
    assert not sweep_dir.exists()  # refused before anything was written


def test_failed_trial_resumes_from_its_checkpoint(local_ray, tmp_path, capsys):
    spec = {"name": "faulty", "defaults": {**TINY_DEFAULTS, "epochs": 2},
            "resources": {"workers": 1, "cpus_per_worker": 1, "worker_retries": 0},
            "grid": {"seed": [424242]}}
    code, sweep_dir = run_spec(tmp_path, spec)
    assert code == 1
    trial = layout.trial_dir(sweep_dir, FAULT_TRIAL)
    first_epoch = (trial / "metrics.jsonl").read_text()
    assert [m["epoch"] for m in metrics_lines(trial)] == [0]
    capsys.readouterr()
    assert main(["sweep", "status", str(sweep_dir)]) == 0
    status = capsys.readouterr().out
    assert "ERROR" in status and "InjectedFault: injected fault at after_epoch=0" in status

    assert main(["sweep", "resume", str(sweep_dir), "--verbose", "0"]) == 0
    assert [m["epoch"] for m in metrics_lines(trial)] == [0, 1]
    # epoch 0 was not trained again: its metrics line (with its timing) is untouched
    assert (trial / "metrics.jsonl").read_text().startswith(first_epoch)
    assert len(pd.read_csv(trial / layout.CERTIFY, sep="\t")) == 8
    assert json.loads((trial / layout.STATE).read_text())["state"] == "TERMINATED"


def test_restart_errored_starts_the_failed_trial_afresh_and_leaves_the_others(local_ray,
                                                                              tmp_path):
    spec = {"name": "restart", "defaults": {**TINY_DEFAULTS, "epochs": 2},
            "resources": {"workers": 1, "cpus_per_worker": 1, "worker_retries": 0},
            "grid": {"seed": [454545, 1]}}
    code, sweep_dir = run_spec(tmp_path, spec, "--max-concurrent", "2")
    assert code == 1
    failed, other = (layout.trial_dir(sweep_dir, name) for name in (RESTART_TRIAL, "seed1"))
    old_id = json.loads((failed / layout.STATE).read_text())["trial_id"]
    finished = {f: (other / f).read_bytes()
                for f in ("checkpoint.pt", "metrics.jsonl", layout.CERTIFY, layout.STATE)}
    assert (sweep_dir / layout.TRAIN / f"{RESTART_TRIAL}-{old_id}").is_dir()

    assert main(["sweep", "resume", str(sweep_dir), "--restart-errored", "--verbose", "0"]) == 0
    aside = sweep_dir / layout.ERRORED / f"{RESTART_TRIAL}.1"  # the failed run's outputs, kept
    assert json.loads((aside / layout.STATE).read_text())["state"] == "ERROR"
    assert [m["epoch"] for m in metrics_lines(aside)] == [0]
    state = json.loads((failed / layout.STATE).read_text())
    assert state["state"] == "TERMINATED" and state["trial_id"] == old_id
    assert [m["epoch"] for m in metrics_lines(failed)] == [0, 1]  # epoch 0 trained again
    assert metrics_lines(failed)[0]["finished_at"] > metrics_lines(aside)[0]["finished_at"]
    assert len(pd.read_csv(failed / layout.CERTIFY, sep="\t")) == 8
    assert {f: (other / f).read_bytes() for f in finished} == finished  # untouched


def test_two_worker_trial_trains_with_ddp_and_shards_certification(local_ray, tmp_path):
    spec = {"name": "ddp", "defaults": {**TINY_DEFAULTS, "m_train": 2, "multi_noise": True},
            "resources": {"workers": 2, "cpus_per_worker": 1, "start_timeout_s": 60},
            "grid": {"attack": ["pgd"]}}
    code, sweep_dir = run_spec(tmp_path, spec)
    assert code == 0
    trial = layout.trial_dir(sweep_dir, "pgd")
    assert [m["world_size"] for m in metrics_lines(trial)] == [2]
    rows = pd.read_csv(trial / layout.CERTIFY, sep="\t")
    assert list(rows["idx"]) == list(range(0, 512, 64))  # merged from both ranks' shards
    shards = [pd.read_csv(trial / f"certify.part{r}of2.tsv", sep="\t") for r in range(2)]
    assert [list(s["idx"]) for s in shards] == [[0, 128, 256, 384], [64, 192, 320, 448]]


def test_a_killed_worker_is_replaced_and_the_trial_resumes_by_itself(local_ray, tmp_path):
    spec = {"name": "killed-worker", "defaults": {**TINY_DEFAULTS, "epochs": 2},
            "resources": {"workers": 1, "cpus_per_worker": 1, "worker_retries": 1},
            "grid": {"seed": [434343]}}
    code, sweep_dir = run_spec(tmp_path, spec)
    assert code == 0  # no user action: Train restarted the worker group from the checkpoint
    killed = local_ray / f"kill_after_epoch-0-{KILL_TRIAL}"  # made the instant it fired
    assert killed.exists()  # the worker did die
    trial = layout.trial_dir(sweep_dir, KILL_TRIAL)
    lines = [json.loads(line) for line in (trial / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [0, 1]
    # epoch 0 was trained once, before the kill: the replacement resumed from its checkpoint
    assert lines[0]["finished_at"] < killed.stat().st_mtime < lines[1]["finished_at"]
    assert json.loads((trial / layout.STATE).read_text())["state"] == "TERMINATED"
    assert len(pd.read_csv(trial / layout.CERTIFY, sep="\t")) == 8
