"""``smoothadv.sweep.result_grid`` (sweep.results): a sweep's Tune ``ResultGrid``, read from the
folder without Ray, after the restore point's signatures are checked, loading no unsigned
pickle. The Tune experiments here are written with Tune's own ``Trial`` records, as Tune saves
them; tests/test_sweep_ray.py reads the grid of a real sweep."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
from conftest import sweep_yaml
from smoothadv.common import layout
from smoothadv.common.errors import UserError
from smoothadv.sweep import trust
from smoothadv.sweep.storage import open_sweep

DEFAULTS = {"dataset": "synthetic", "arch": "lenet", "epochs": 1, "device": "cpu"}
SPEC = {"name": "grid", "defaults": DEFAULTS, "resources": {"workers": 1, "cpus_per_worker": 1},
        "grid": {"sigma": [0.25, 0.5]}}
STAGED = {**SPEC, "name": "staged", "stages": {"n": 200, "skip": 8}}
FINAL = {"cert_acc_0": 0.75, "cert_acc_0.25": 0.5, "cert_acc_0.5": 0.25, "acr": 0.31,
         "training_iteration": 2}


class Payload:
    """What a forged pickle does when loaded: leaves a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def sweep_folder(tmp_path: Path, spec: dict) -> Path:
    folder = tmp_path / spec["name"]
    folder.mkdir()
    (folder / layout.SPEC).write_text(sweep_yaml(spec))
    return folder


def tune_experiment(folder: Path, statuses: dict[str, str], name: str = layout.TUNE,
                    payload: Path | None = None) -> Path:
    """Tune's experiment ``name`` of the sweep ``folder`` as Tune 2.60 saves it (the trials'
    records, each trial's result.json; an errored trial's error.txt and error.pkl, the pickle
    a Payload leaving ``payload``), signed with the user's key as the driver signs it."""
    from ray.train._internal.storage import StorageContext
    from ray.tune import PlacementGroupFactory
    from ray.tune.experiment import Trial

    records = []
    for i, (trial, status) in enumerate(statuses.items()):
        sigma = 0.25 * (i + 1)
        storage = StorageContext(str(folder), name, trial_dir_name=trial)
        record = Trial("trial_driver", config={"trial": {"name": trial, "sigma": sigma}},
                       trial_id=f"0000{i}", storage=storage, stub=True,
                       _setup_default_resource=False)
        record.placement_group_factory = PlacementGroupFactory([{"CPU": 0, "memory": 1}])
        record.custom_trial_name = record.custom_dirname = trial  # sweep.param_space
        result = {**FINAL, "trial_id": record.trial_id} if status == Trial.TERMINATED else {
            "epoch": 0, "loss": 2.3, "training_iteration": 1, "trial_id": record.trial_id}
        record.run_metadata.last_result = result
        trial_dir = folder / name / trial
        trial_dir.mkdir(parents=True, exist_ok=True)
        (trial_dir / "result.json").write_text(json.dumps(result) + "\n")
        if status == Trial.ERROR:
            (trial_dir / "error.txt").write_text("InjectedFault: injected fault at epoch 0\n")
            (trial_dir / "error.pkl").write_bytes(pickle.dumps(Payload(payload)))
            record.run_metadata.error_filename = "error.txt"
            record.run_metadata.pickled_error_filename = "error.pkl"
        record.set_status(status)
        records.append(list(record.get_json_state()))
    state = folder / name / "experiment_state-2026-12-07_20-00-00.json"
    state.write_text(json.dumps({"trial_data": records, "runner_data": {}, "stats": {}}))
    trust.sign_tune_state(open_sweep(folder), name)
    return state


def test_one_row_per_trial_with_its_grid_values_and_metrics_without_ray(tmp_path):
    import ray
    from smoothadv.sweep import result_grid  # the documented name

    ray_before = ray.is_initialized()
    folder = sweep_folder(tmp_path, SPEC)
    marker = tmp_path / "error-pickle-loaded"
    tune_experiment(folder, {"sigma0.25": "TERMINATED", "sigma0.5": "ERROR"}, payload=marker)
    grid = result_grid(str(folder))
    table = grid.get_dataframe().sort_values("config/trial/name")
    assert list(table["config/trial/name"]) == ["sigma0.25", "sigma0.5"]
    assert list(table["config/trial/sigma"]) == [0.25, 0.5]
    assert table["cert_acc_0.25"].iloc[0] == 0.5 and table["acr"].iloc[0] == 0.31
    assert grid.num_errors == 1 and grid.num_terminated == 1
    # the errored trial's error is Tune's text of it; its unsigned pickle was never loaded
    [error] = grid.errors
    assert "InjectedFault: injected fault at epoch 0" in str(error)
    assert not marker.exists()
    assert ray.is_initialized() == ray_before  # read from files: Ray was not started
    assert result_grid(folder).get_dataframe().shape == grid.get_dataframe().shape  # a Path


def test_a_forged_experiment_state_is_refused_before_tune_unpickles_it(tmp_path):
    from ray.tune import ExperimentAnalysis
    from ray.tune.utils.serialization import TuneFunctionEncoder
    from smoothadv.sweep.results import result_grid

    folder = sweep_folder(tmp_path, SPEC)
    state = tune_experiment(folder, {"sigma0.25": "TERMINATED", "sigma0.5": "TERMINATED"})
    marker = tmp_path / "forged-state-loaded"
    forged = json.loads(state.read_text())
    # Tune's encoder pickles what JSON cannot hold, and its reader unpickles it
    forged["stats"] = json.loads(json.dumps({"start_time": Payload(marker)},
                                            cls=TuneFunctionEncoder))
    state.write_text(json.dumps(forged))
    with pytest.raises(UserError, match=f"{state.name}: not signed by your smoothadv key"):
        result_grid(folder)
    assert not marker.exists()
    ExperimentAnalysis(str(folder / layout.TUNE))  # what result_grid did not hand it: it runs
    assert marker.exists()


def test_a_sweep_without_results_is_one_line_and_stays_as_it_was(tmp_path):
    from smoothadv.sweep.results import result_grid

    with pytest.raises(UserError, match="not a sweep folder"):
        result_grid(tmp_path)
    folder = sweep_folder(tmp_path, SPEC)
    with pytest.raises(UserError, match=r"grid/tune: no Tune results yet"):
        result_grid(folder)
    # a driver killed before Tune saved any state: its unsigned tuner.pkl is left alone
    (folder / layout.TUNE).mkdir()
    tuner = folder / layout.TUNE / "tuner.pkl"
    tuner.write_bytes(pickle.dumps(Payload(tmp_path / "tuner-loaded")))
    with pytest.raises(UserError, match="no Tune results yet"):
        result_grid(folder)
    assert tuner.exists() and not (tmp_path / "tuner-loaded").exists()
    with pytest.raises(UserError, match="no stage 2 in this sweep; give stage None, 0 or 1"):
        result_grid(folder, stage=2)


def test_a_staged_sweep_reads_its_last_stage_by_default_and_any_stage_asked(tmp_path):
    from smoothadv.sweep.results import result_grid

    folder = sweep_folder(tmp_path, STAGED)
    tune_experiment(folder, {"sigma0.25": "TERMINATED", "sigma0.5": "TERMINATED"})
    assert len(result_grid(folder).get_dataframe()) == 2  # stage 1 is all there is yet
    tune_experiment(folder, {"sigma0.5": "TERMINATED"}, name="tune-stage2")
    assert list(result_grid(folder).get_dataframe()["config/trial/name"]) == ["sigma0.5"]
    assert len(result_grid(folder, stage=1).get_dataframe()) == 2
    with pytest.raises(UserError, match="tune-stage3: no Tune results yet"):
        result_grid(folder, stage=3)
    with pytest.raises(UserError, match="no stage 4 in this sweep; give stage 1 to 3"):
        result_grid(folder, stage=4)
