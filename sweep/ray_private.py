"""Every private Ray name smoothadv uses (Ray 2.60), each with the behaviour it works around.

tests/test_ray_private.py holds, for each, a test that fails when that behaviour changes (the
name gone, or Ray offering a public way): then this module is the one place to change.

- ``ray.train._internal.session``: the queue through which Train hands a Tune trial its
  results (:func:`await_train_results_in_tune`).
- ``ray._private.ray_constants.ENABLE_RAY_CLUSTER``: a local Ray on loopback only
  (:func:`loopback_only`).
- ``Tuner._local_tuner``: a restored Tuner's TuneConfig and RunConfig
  (:func:`restored_configs`).
- ``ray.train.v2._internal``: Train's placement-group cleaner callback
  (:func:`placement_group_cleaner`) and the torch framework tag (:func:`torch_framework`).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any


def await_train_results_in_tune(timeout_s: float = 120.0) -> None:
    """Return only once the Tune trial has taken every result Train sent it (call it in a
    Tune function after ``trainer.fit()``). Ray 2.60 deadlocks the trial otherwise: Train's
    TuneReportCallback hands results over through a queue actor (the session's
    ``_inter_actor_queue``) that the trial's main thread polls between Tune's steps, moving
    each into a one-slot thread queue; a returning function puts its closing (duplicate)
    result into that slot, and if Train's last result still waits in the actor queue then,
    the main thread blocks forever putting it into the full slot (seen in a sweep logging to
    W&B, whose slow result callbacks widen the gap)."""
    from ray.train._internal.session import get_session

    session = get_session()
    handover = getattr(session, "_inter_actor_queue", None)
    if handover is None:
        return
    deadline = time.monotonic() + timeout_s
    while not handover.empty() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)  # the main thread's take-then-put of the last result is two statements


@contextlib.contextmanager
def loopback_only() -> Iterator[None]:
    """Within: ``ray.init(_node_ip_address="127.0.0.1")`` keeps every Ray server (GCS,
    raylet, workers, agents, metrics) on loopback. Ray binds them to loopback only when the
    node's IP is loopback, and on Linux it swaps a loopback ``_node_ip_address`` for the
    machine's address unless it believes it runs on macOS/Windows (``ENABLE_RAY_CLUSTER``
    false, read from RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER once when ray is imported). That belief
    for this call only: the variable itself would make any ``ray start --address`` that
    inherits it refuse to join (tests/test_local_ray_ports)."""
    from ray._private import ray_constants

    cluster_mode = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = cluster_mode


def restored_configs(tuner) -> tuple[Any, Any]:
    """A restored Tuner's ``(TuneConfig, RunConfig)``, to change in place before ``fit()``.
    ``Tuner.restore`` keeps the first run's configs (concurrency bound, scheduler, callbacks)
    and takes no argument for them, but a resumed sweep runs on the cluster it has now and
    logs to the trackers named now; the Tuner reads both from these attributes when it fits."""
    local = tuner._local_tuner
    return local._tune_config, local._run_config


def placement_group_cleaner() -> type:
    """Ray Train's ``PlacementGroupCleanerCallback``, which a ``DataParallelTrainer`` adds to
    its default callbacks (``_create_default_callbacks``): it asks the state API whether the
    Train controller still lives, to remove the placement group of one that died."""
    from ray.train.v2._internal.callbacks.placement_group_callback import (
        PlacementGroupCleanerCallback,
    )

    return PlacementGroupCleanerCallback


def torch_framework():
    """The framework tag a Train backend config reports (``BackendConfig.framework``), as
    Ray's own ``TorchConfig`` reports it."""
    from ray.train.v2._internal.util import TrainingFramework

    return TrainingFramework.TORCH
