"""What a trial's driver hands Ray Train, importable without torch: the driver stays light.

Each trial's driver (Tune's function trainable, ``sweep.trial_driver.trial_driver``) only
builds a Ray Train run and waits on it. The worker function here imports
``sweep.trial_worker`` (torch, models, data, certification, pandas, …) when it runs, in the
Train workers alone.
``TorchTrainer`` itself would import torch in the driver (≈300 MiB PSS): its ``TorchConfig``
lives in ``ray.train.torch``, which imports torch first. ``TorchBackendConfig`` is the same
configuration for a ``DataParallelTrainer``, and its backend and worker context import Ray's
torch backend (``ray.train.torch.config``) only where they run: in Train's controller (the
process group set-up) and in the workers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ray.train.backend import Backend, BackendConfig

# Set by sweep.local_ray.init_ray when it starts a local Ray without a dashboard (inherited by Ray's
# processes): there Train's placement-group cleaner has no state API to ask.
NO_STATE_API = "SMOOTHADV_NO_STATE_API"


def trainer_class():
    """Ray Train's ``DataParallelTrainer``; where Ray serves no state API (a local Ray without
    a dashboard), one without its placement-group cleaner. The cleaner asks the state API
    (the dashboard's) whether the Train controller still lives, to remove the workers'
    placement group of a controller that died ungracefully. Without the API it can never
    clean anything, and each trial's end waited ~12 s for its unanswered query (measured:
    a trial's last row to its end went from ~17 s to ~5 s). On a cluster, or locally with
    ``--dashboard``, the cleaner stays."""
    import os

    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer
    from smoothadv.sweep.ray_private import placement_group_cleaner

    if os.environ.get(NO_STATE_API) != "1":
        return DataParallelTrainer
    cleaner = placement_group_cleaner()

    class LocalTrainer(DataParallelTrainer):
        def _create_default_callbacks(self):
            return [c for c in super()._create_default_callbacks()
                    if not isinstance(c, cleaner)]

    return LocalTrainer


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train's ``train_loop_per_worker``: runs ``sweep.trial_worker.run_on_worker`` on
    the ``sweep.trial_task.TrialTask`` in ``loop_config["task"]``."""
    from smoothadv.sweep.trial_worker import run_on_worker

    run_on_worker(loop_config["task"])


@dataclass
class TorchBackendConfig(BackendConfig):
    """Ray's ``TorchConfig`` (same fields and defaults: gloo on CPU, NCCL on GPU), importing
    torch only where Ray Train uses it."""

    backend: str | None = None
    init_method: str = "env"
    timeout_s: int = 1800

    def torch_config(self):
        from ray.train.torch.config import TorchConfig

        return TorchConfig(backend=self.backend, init_method=self.init_method,
                           timeout_s=self.timeout_s)

    @property
    def backend_cls(self):
        return _TorchBackend

    @property
    def train_func_context(self):
        return _TorchContext

    @property
    def framework(self):
        from smoothadv.sweep.ray_private import torch_framework

        return torch_framework()

    def to_dict(self) -> dict[str, Any]:
        return {"backend": self.backend, "init_method": self.init_method,
                "timeout_s": self.timeout_s}


def _torch_backend():
    from ray.train.torch.config import _TorchBackend as RayTorchBackend

    return RayTorchBackend()


class _TorchBackend(Backend):
    """Delegates to Ray's torch backend, imported at the first call (in Train's controller)."""

    share_cuda_visible_devices: bool = True  # as Ray's: every worker on a node sees its GPUs

    def on_start(self, worker_group, backend_config: TorchBackendConfig):
        _torch_backend().on_start(worker_group, backend_config.torch_config())

    def on_training_start(self, worker_group, backend_config: TorchBackendConfig):
        _torch_backend().on_training_start(worker_group, backend_config.torch_config())

    def on_shutdown(self, worker_group, backend_config: TorchBackendConfig):
        _torch_backend().on_shutdown(worker_group, backend_config.torch_config())


class _TorchContext:
    """Ray's ``TorchConfigContextManager`` (sets each worker's CUDA device), in the worker."""

    def __enter__(self):
        from ray.train.torch.config import TorchConfigContextManager

        self._context = TorchConfigContextManager()
        return self._context.__enter__()

    def __exit__(self, *exc):
        return self._context.__exit__(*exc)
