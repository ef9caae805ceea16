"""The Ray behaviours sweep.ray_private works around, each checked against Ray itself: a Ray
upgrade that removes a private name, or offers a public way, fails here first. The queue
hand-over is reproduced in tests/test_tune_handover.py, the placement-group cleaner and the
torch framework tag in tests/test_light_driver.py, the loopback-only local Ray end to end in
tests/test_local_ray_ports.py."""

from __future__ import annotations

import inspect

from smoothadv.sweep import ray_private


def test_a_restored_tuner_keeps_the_first_runs_configs_and_takes_no_new_ones(tmp_path):
    """``Tuner.restore`` has no argument for a TuneConfig or RunConfig (if it gains one, use
    it instead of ray_private.restored_configs) and keeps the first run's, where
    restored_configs finds them (a Tuner makes its restore point when it is made)."""
    from ray import tune

    restore = set(inspect.signature(tune.Tuner.restore).parameters)
    assert not {"tune_config", "run_config"} & restore, restore

    class Marker(tune.Callback):
        pass

    def trainable(config):
        pass

    tune.Tuner(trainable, tune_config=tune.TuneConfig(max_concurrent_trials=3),
               run_config=tune.RunConfig(name="x", storage_path=str(tmp_path),
                                         callbacks=[Marker()]))
    restored = tune.Tuner.restore(str(tmp_path / "x"), trainable)
    tune_config, run_config = ray_private.restored_configs(restored)
    assert isinstance(tune_config, tune.TuneConfig) and isinstance(run_config, tune.RunConfig)
    assert tune_config.max_concurrent_trials == 3
    assert [type(c).__name__ for c in run_config.callbacks] == ["Marker"]
    tune_config.max_concurrent_trials = 1  # what a resume does: the Tuner reads it when it fits
    assert ray_private.restored_configs(restored)[0].max_concurrent_trials == 1


def test_loopback_only_makes_ray_take_loopback_as_the_nodes_address(monkeypatch):
    """Ray reads ``ray_constants.ENABLE_RAY_CLUSTER`` when it picks the address of a node it is
    about to start; within loopback_only that is 127.0.0.1, and the constant is restored after.
    (A Ray this test session already runs answers with its own node's address: set aside.)"""
    import ray._private.worker
    from ray._private import ray_constants, services

    monkeypatch.setattr(ray._private.worker, "_global_node", None)

    before = ray_constants.ENABLE_RAY_CLUSTER
    assert before is True  # Linux: Ray would swap a loopback address for the machine's
    with ray_private.loopback_only():
        assert services.get_node_ip_address() == "127.0.0.1"
    assert ray_constants.ENABLE_RAY_CLUSTER is before


def test_the_result_queue_is_the_sessions_attribute_ray_fills():
    """await_train_results_in_tune waits on ``_inter_actor_queue`` of Train's session: the
    attribute Ray's TuneReportCallback creates (a renamed one would make the wait a no-op, and
    the deadlock of tests/test_tune_handover.py a matter of timing)."""
    from ray.train._internal.session import _TrainSession
    from ray.tune.integration.ray_train import TuneReportCallback

    assert "_get_or_create_inter_actor_queue" in inspect.getsource(TuneReportCallback)
    assert "self._inter_actor_queue" in inspect.getsource(
        _TrainSession._get_or_create_inter_actor_queue)
