"""The trial driver's light Ray Train set-up (sweep.train_loop): it imports no torch, and its
torch backend is Ray's ``TorchTrainer`` backend, so a Ray upgrade that changes the latter fails
here rather than in a sweep. The sweep tests run it for real (one and two workers)."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

from smoothadv.sweep.train_loop import NO_STATE_API, TorchBackendConfig


def test_building_the_trial_drivers_trainer_imports_no_torch(tmp_path):
    """What ``trial_driver`` imports and builds (not Tune's session, which needs a sweep)."""
    code = f"""
import sys
import ray.train
from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer
import smoothadv.sweep.trial_driver
from smoothadv.sweep.train_loop import TorchBackendConfig, train_loop_per_worker
trainer = DataParallelTrainer(
    train_loop_per_worker, backend_config=TorchBackendConfig(backend="gloo"),
    train_loop_config={{}}, scaling_config=ray.train.ScalingConfig(num_workers=2),
    run_config=ray.train.RunConfig(name="t", storage_path={str(tmp_path)!r}))
import ray.cloudpickle as pickle
pickle.dumps(trainer._create_default_callbacks()), pickle.dumps(trainer._get_train_func())
heavy = sorted(m for m in ("torch", "torchvision", "scipy", "smoothadv.sweep.trial_worker",
                           "smoothadv.trainers.train", "smoothadv.certify.runner")
               if m in sys.modules)
print("loaded:", heavy)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "loaded: []" in out.stdout, out.stdout


def test_the_backend_config_mirrors_rays_torch_config():
    from ray.train.torch.config import TorchConfig, TorchConfigContextManager
    from ray.train.torch.config import _TorchBackend as RayTorchBackend

    ours = {f.name: f.default for f in dataclasses.fields(TorchBackendConfig)}
    assert ours == {f.name: f.default for f in dataclasses.fields(TorchConfig)}
    config = TorchBackendConfig(backend="gloo", timeout_s=60)
    assert config.to_dict() == TorchConfig(backend="gloo", timeout_s=60).to_dict()
    assert config.torch_config() == TorchConfig(backend="gloo", timeout_s=60)
    assert config.framework == TorchConfig().framework
    backend = config.backend_cls
    for attribute in ("share_cuda_visible_devices", "has_replica_groups"):
        assert getattr(backend, attribute) == getattr(RayTorchBackend, attribute), attribute
    # every hook Ray's torch backend implements is delegated, none left to the no-op base
    hooks = {name for name, value in vars(RayTorchBackend).items()
             if callable(value) and not name.startswith("_")}
    assert hooks <= set(vars(backend)), hooks - set(vars(backend))
    context = config.train_func_context()
    context.__enter__()  # no CUDA here: Ray's context manager does nothing, but it ran
    assert isinstance(context._context, TorchConfigContextManager)
    assert context.__exit__(None, None, None) is False


def test_without_a_state_api_the_trainer_drops_only_the_placement_group_cleaner(tmp_path):
    """A local Ray without a dashboard serves no state API: the cleaner (which asks it) is
    left out and every other default callback kept; with the API (a cluster, --dashboard) the
    trainer is Ray's own."""
    code = f"""
import os, sys
import ray.train
from smoothadv.sweep.train_loop import (NO_STATE_API, TorchBackendConfig, train_loop_per_worker,
                                        trainer_class)
def callbacks():
    trainer = trainer_class()(
        train_loop_per_worker, backend_config=TorchBackendConfig(backend="gloo"),
        train_loop_config={{}}, scaling_config=ray.train.ScalingConfig(num_workers=1),
        run_config=ray.train.RunConfig(name="t", storage_path={str(tmp_path)!r}))
    return [type(c).__name__ for c in trainer._create_default_callbacks()]
with_api = callbacks()
os.environ[NO_STATE_API] = "1"
print(with_api, callbacks(), sep="\\n")
"""
    env = {k: v for k, v in os.environ.items() if k != NO_STATE_API}  # (set by local_ray)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    with_api, without = (eval(line) for line in out.stdout.splitlines()[-2:])
    assert "PlacementGroupCleanerCallback" in with_api
    assert without == [c for c in with_api if c != "PlacementGroupCleanerCallback"]
