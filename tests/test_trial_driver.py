"""A trial's config is built once (issue 23): the trial driver takes it from Tune's record of
the trial (sweep.param_space), validated there, and hands the validated config and the spec's
validated blocks to its workers as objects (sweep.trial_task); nothing re-expands the grid."""

from __future__ import annotations

import pytest
from smoothadv.common.errors import UserError
from smoothadv.sweep import param_space
from smoothadv.sweep.spec import parse_spec
from smoothadv.sweep.storage import open_sweep
from smoothadv.sweep.trial_driver import trial_task

SPEC = {"name": "once", "defaults": {"dataset": "synthetic", "arch": "lenet", "epochs": 2},
        "grid": [{"sigma": [0.25, 0.5]}, {"sigma": [1.0], "init_from": [None]}],
        "resources": {"cpus_per_worker": 2},
        "stages": {"n": 64, "skip": 2}, "schedule": {"min_trials": 2},
        "attack_eval": {"epsilons": [0.25], "steps": 1, "m_test": 2, "n": 16}}


def variants(trials, stage=0):
    """Tune's variants of the param space, as Tune hands each trial driver its own."""
    space = param_space.param_space(trials, stage)
    return [{**{k: v for k, v in space.items() if k != param_space.KEY}, param_space.KEY: r}
            for r in space[param_space.KEY]["grid_search"]]


def test_the_driver_takes_each_trial_from_tunes_record(monkeypatch):
    spec = parse_spec(SPEC)
    trials = spec.trials()
    monkeypatch.setattr(type(spec), "trials", lambda self: pytest.fail("grid re-expanded"))
    for trial, variant in zip(trials, variants(trials), strict=True):
        got = param_space.trial_from_record(variant)
        assert (got.name, got.config) == (trial.name, trial.config)
        assert got.params == {k: v for k, v in trial.params.items() if v is not None}


@pytest.mark.parametrize("record, words", [
    (["__fn_ph", "0badc0de"], "not a smoothadv trial record"),  # a placeholder Tune left
    ({"name": "x"}, "not a smoothadv trial record"),
    ({"name": "x", "config": {"sigma": -1}}, "trial x: sigma"),
    ({"name": "x", "config": {"sigma": 0.5, "epohcs": 3}}, "trial x: epohcs"),
])
def test_a_record_that_is_no_trial_is_one_line(record, words):
    with pytest.raises(UserError, match=words) as refused:
        param_space.trial_from_record({param_space.KEY: record})
    assert "\n" not in str(refused.value)


def test_the_workers_task_holds_the_validated_objects(tmp_path):
    spec = parse_spec(SPEC)
    trial = param_space.trial_from_record(variants(spec.trials(), stage=2)[1])
    task = trial_task(open_sweep(tmp_path / "once"), spec, trial, "abcde_00001", 2)
    assert task.config is trial.config and task.stage == 2 and task.threads == 2
    assert (task.stages, task.schedule, task.attack_eval) == (spec.stages, spec.schedule,
                                                              spec.attack_eval)
    assert task.stages is spec.stages and task.attack_eval is spec.attack_eval
    assert task.trial_dir == str(tmp_path / "once" / "trials" / trial.name)
    assert task.trial_uri is None  # a folder every node mounts: no bucket lineage
