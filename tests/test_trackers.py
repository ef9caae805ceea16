"""``--log-to``: sweeps log to experiment trackers through Ray Tune's own logger callbacks. A
tiny real sweep logs into a real local MLflow store, read back with MLflow's client."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest
from conftest import TRACKED_TRIAL, sweep_yaml
from smoothadv.cli.main import main
from smoothadv.common import layout
from test_sweep_ray import TINY_DEFAULTS, run_spec

# One gaussian and one pgd trial: the union's parts grid different keys. The pgd trial raises
# after its epoch is trained and saved but before it is reported (once, conftest.TRACKED_TRIAL):
# `sweep resume` then certifies it without training it again.
SPEC = {"name": "tracked", "defaults": TINY_DEFAULTS,
        "resources": {"workers": 1, "cpus_per_worker": 1, "worker_retries": 0},
        "grid": [{"method": ["gaussian"], "sigma": [0.25]},
                 {"attack": ["pgd"], "sigma": [0.5], "seed": [484848]}]}
GRIDDED = {"gaussian-sigma0.25": {"method": "gaussian", "sigma": "0.25"},
           TRACKED_TRIAL: {"attack": "pgd", "sigma": "0.5", "seed": "484848"}}


def needs(*modules: str):
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    return pytest.mark.skipif(bool(missing), reason=f"{', '.join(missing)} not installed "
                              "(the dev extra installs it: pip install -e '.[dev]')")


@needs("mlflow", "sqlalchemy", "alembic")
def test_log_to_mlflow_records_each_trials_params_and_metrics_and_resume_goes_on(
        local_ray, tmp_path, capsys, monkeypatch):
    from mlflow.tracking import MlflowClient

    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(var, raising=False)
    code, sweep_dir = run_spec(tmp_path, SPEC, "--log-to", "mlflow")
    assert code == 1  # the pgd trial raised after its epoch
    uri = f"sqlite:///{sweep_dir / 'mlflow.db'}"
    assert f"logging to MLflow: {uri}, experiment tracked" in capsys.readouterr().out
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("tracked")
    assert experiment.artifact_location.endswith(str(sweep_dir / "mlartifacts"))

    def runs() -> dict:
        found = client.search_runs([experiment.experiment_id])
        assert len(found) == len(GRIDDED)  # one MLflow run per trial
        return {r.info.run_name: r for r in found}

    def history(run, key: str) -> list[tuple[int, float]]:
        return [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)]

    failed = runs()[TRACKED_TRIAL]
    assert failed.info.status == "FAILED"
    assert failed.data.params["trial/sigma"] == "0.5" and failed.data.metrics == {}

    # resumed without --log-to: Tune's restore point kept the tracker; the trial goes on in
    # its own MLflow run
    assert main(["sweep", "resume", str(sweep_dir), "--verbose", "0"]) == 0
    assert f"logging to MLflow: {uri}, experiment tracked" in capsys.readouterr().out
    assert set(runs()) == set(GRIDDED)  # named after its trial; none added by the resume
    assert runs()[TRACKED_TRIAL].info.run_id == failed.info.run_id
    for name, gridded in GRIDDED.items():
        run = runs()[name]
        assert run.info.status == "FINISHED"
        params = run.data.params
        # the trial's record as Tune holds it (sweep.param_space), flattened
        assert {k: params.get(f"trial/{k}") for k in gridded} == gridded
        # a key this trial's part of the grid does not set is left out, not "None"
        assert ("trial/attack" in params, "trial/method" in params) == ("attack" in gridded,
                                                                        "method" in gridded)
        assert params["trial/name"] == name
        # the trial's full config
        assert params["trial/config/sigma"] == gridded["sigma"]
        assert params["trial/config/epochs"] == "1"
        assert params["trial/config/certify/n"] == "100"
        assert params["trial/config/method"] == gridded.get("method", "smoothadv")
        # the epoch's training metrics (the pgd trial's epoch never reached Tune), then the
        # final certification; run.data.metrics holds each one's last value
        metrics = run.data.metrics
        if name != TRACKED_TRIAL:
            assert [v for _, v in history(run, "epoch")] == [0.0]
            epoch = json.loads((layout.trial_dir(sweep_dir, name) / "metrics.jsonl").read_text())
            assert metrics["train_loss"] == pytest.approx(epoch["train_loss"])
        final = [json.loads(line)
                 for line in (sweep_dir / layout.TUNE / name / "result.json").open()][-1]
        assert metrics["acr"] == pytest.approx(final["acr"])
        assert metrics["cert_acc_0.25"] == pytest.approx(final["cert_acc_0.25"])
        assert [s for s, _ in history(run, "acr")] == [final["training_iteration"]]
        assert not any(k.startswith("config/") for k in metrics)  # the config is the params


@pytest.mark.parametrize("kind", ["mlflow", "wandb"])
def test_a_tracker_whose_package_is_missing_is_one_error_line(tmp_path, capsys, monkeypatch,
                                                              kind):
    monkeypatch.setitem(sys.modules, kind, None)  # as if not installed: find_spec gives None
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    code, sweep_dir = run_spec(tmp_path, SPEC, "--log-to", kind)
    assert code == 2
    err = capsys.readouterr().err
    assert err == (f"smoothadv: error: --log-to {kind}: {kind} not installed; "
                   f"pip install 'smoothadv[{kind}]'\n")
    assert not sweep_dir.exists()  # refused before anything was written


def wandb_records(path) -> list:
    """The records of an offline W&B run file (run-<id>.wandb): W&B's LevelDB-log layout, a
    7-byte file header, then 32 KiB blocks of chunks (crc32, length, type; 1 full, 2 first,
    3 middle, 4 last) holding its protobuf Records."""
    import struct

    from wandb.proto import wandb_internal_pb2

    data, records, pos, chunks = path.read_bytes(), [], 7, b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a chunk header: padding
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:
            break
        chunks += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            records.append(wandb_internal_pb2.Record.FromString(chunks))
            chunks = b""
    return records


@needs("wandb")
def test_log_to_wandb_without_a_key_runs_offline_into_the_sweep_folder(local_ray, tmp_path,
                                                                      capsys, monkeypatch):
    for var in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_PROJECT"):
        monkeypatch.delenv(var, raising=False)
    spec = {**SPEC, "name": "tracked-wandb", "grid": {"method": ["gaussian"], "sigma": [0.25]}}
    code, sweep_dir = run_spec(tmp_path, spec, "--log-to", "wandb")
    assert code == 0
    assert "logging to W&B (offline): project tracked-wandb" in capsys.readouterr().out
    [run_file] = (sweep_dir / "wandb").glob("offline-run-*/run-*.wandb")
    records = wandb_records(run_file)
    [run] = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert (run.project, run.run_group) == ("tracked-wandb", "tracked-wandb")
    assert run.display_name == "gaussian-sigma0.25"
    config = {u.key: json.loads(u.value_json) for u in run.config.update}
    record = config["trial"]  # the trial's record as Tune holds it (sweep.param_space)
    assert record["sigma"] == 0.25 and record["method"] == "gaussian"
    assert record["config"]["epochs"] == 1
    history = [{"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in r.history.item}
               for r in records if r.WhichOneof("record_type") == "history"]
    assert len(history) == 2  # the epoch's result, then the final certification's
    assert history[0]["epoch"] == 0 and "train_loss" in history[0]
    assert {"acr", "cert_acc_0.25"} <= set(history[1])
    assert records[-1].WhichOneof("record_type") == "exit"  # finished, not cut short


@needs("mlflow", "sqlalchemy", "alembic", "wandb")
def test_resume_rebuilds_the_first_runs_trackers_for_this_folder_and_environment(tmp_path,
                                                                                monkeypatch):
    """What Tuner.restore brings back (the first run's callbacks, pickled in tune/tuner.pkl)
    and what `sweep resume` makes of them."""
    from smoothadv.sweep import trackers

    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "WANDB_API_KEY", "WANDB_MODE",
                "WANDB_PROJECT"):
        monkeypatch.delenv(var, raising=False)
    other = object()  # a callback that is not a tracker: kept as it is
    moved, here = tmp_path / "old-place", tmp_path / "sweep"
    [default_store] = trackers.callbacks(["mlflow"], moved, "s")
    [rebuilt] = trackers.for_resume([default_store], [], here, "s")
    assert rebuilt.tracking_uri == f"sqlite:///{here / 'mlflow.db'}"  # the folder's own store

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "chosen")
    [server] = trackers.callbacks(["mlflow"], moved, "s")
    assert (server.tracking_uri, server.experiment_name) == ("http://mlflow.example:5000",
                                                             "chosen")
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME")
    kept, mlflow, wandb = trackers.for_resume([other, server], ["wandb", "mlflow"], here, "s")
    assert kept is other
    # the first run's server and experiment, as the environment no longer names them
    assert (mlflow.tracking_uri, mlflow.experiment_name) == ("http://mlflow.example:5000",
                                                             "chosen")
    assert (wandb.project, wandb.kwargs["mode"], wandb.kwargs["dir"]) == ("s", "offline",
                                                                          str(here))
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert trackers.for_resume([wandb], [], here, "s")[0].kwargs["mode"] == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert trackers.for_resume([wandb], [], here, "s")[0].kwargs["mode"] == "disabled"


@needs("mlflow", "sqlalchemy", "alembic")
def test_resuming_a_sweep_that_logs_to_an_uninstalled_tracker_is_one_error_line(
        local_ray, tmp_path, capsys, monkeypatch):
    """Tune's restore point holds the tracker's callback, which needs its package to load."""
    from ray import tune
    from smoothadv.sweep import trackers, trust
    from smoothadv.sweep.spec import parse_spec
    from smoothadv.sweep.storage import open_sweep

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    sweep_dir = tmp_path / "tracked"
    sweep_dir.mkdir()
    (sweep_dir / layout.SPEC).write_text(sweep_yaml(parse_spec(SPEC).to_dict()))
    tune.Tuner(lambda config: None,  # writes the restore point, tune/tuner.pkl
               run_config=tune.RunConfig(name=layout.TUNE, storage_path=str(sweep_dir),
                                         callbacks=trackers.callbacks(["mlflow"], sweep_dir,
                                                                      "tracked")))
    trust.sign_tune_state(open_sweep(sweep_dir), layout.TUNE)  # as a driver of this user
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if uninstalled since
    assert main(["sweep", "resume", str(sweep_dir), "--verbose", "0"]) == 2
    assert capsys.readouterr().err == (f"smoothadv: error: {sweep_dir}: this sweep logs to "
                                       "mlflow, which is not installed; pip install "
                                       "'smoothadv[mlflow]'\n")
