"""One Tune trial: build its Ray Train run, fit it, record the outcome in state.json.

Tune runs :func:`trial_driver` as the trial's function trainable. It takes the trial from
Tune's record of it (sweep.param_space.trial_from_record) and the sweep's validated spec from
the sweep driver (``tune.with_parameters``), builds the :class:`~sweep.trial_task.TrialTask`
its workers run, and fits a Ray Train ``DataParallelTrainer`` (V2; built from sweep.train_loop,
so this process imports no torch).

Ray facts relied on (Ray 2.60; docs/reference-facts.md): Train resumes a run when ``fit()`` is
called again with the same (storage_path, name), so the Train run is named after the Tune
trial id.
"""

from __future__ import annotations

import os
import time
from typing import Any

from smoothadv.common import layout
from smoothadv.common.errors import first_line
from smoothadv.sweep.grid import Trial
from smoothadv.sweep.param_space import trial_from_record
from smoothadv.sweep.spec import SweepSpec
from smoothadv.sweep.status import driver_alive
from smoothadv.sweep.storage import SweepFolder, open_sweep
from smoothadv.sweep.trial_task import TrialTask


def trial_driver(param: dict[str, Any], *, sweep_dir: str, spec: SweepSpec) -> None:
    """One Tune trial (``param``: Tune's record of it, sweep.param_space): fit its Ray Train
    run and record the outcome in state.json. ``sweep_dir`` is the sweep's folder or its URI
    in a bucket (sweep.storage); ``spec`` its validated spec."""
    from ray import tune
    from smoothadv.common.provenance import software
    from smoothadv.sweep.ray_private import await_train_results_in_tune

    sweep = open_sweep(sweep_dir)
    trial = trial_from_record(param)
    trial_id = tune.get_context().get_trial_id()
    folder = layout.trial_dir(sweep.local, trial.name)
    sweep.write_json(folder / layout.TRIAL_INFO, {"name": trial.name, "params": trial.params,
                                                  "provenance": software()})
    if spec.schedule is not None and _stopped_early(sweep, trial.name):
        return  # stopped before Tune saved it so (a resumed sweep): it stays stopped
    started = {"trial_id": trial_id, "started_at": time.time()}  # when Tune started the driver
    sweep.write_json(folder / layout.STATE, {"state": "RUNNING", **started})
    task = trial_task(sweep, spec, trial, trial_id, param.get("stage", 0))
    try:
        train_run(spec, task, f"{trial.name}-{trial_id}", f"{sweep.where}/{layout.TRAIN}").fit()
    except BaseException as e:
        if spec.schedule is not None and _stopped_early(sweep, trial.name):
            return  # the schedule's STOP ended the Train run
        # A stopped or dead driver takes the Train run down with it: not the trial's failure.
        sweep.refresh(sweep.local / layout.DRIVER)
        state = "ERROR" if driver_alive(sweep.local) else "INTERRUPTED"
        error = {"error": first_line(root_cause(e))} if state == "ERROR" else {}
        sweep.write_json(folder / layout.STATE, {"state": state, **started, **error,
                                                 "ended_at": time.time()})
        raise
    await_train_results_in_tune()
    if spec.schedule is not None and _stopped_early(sweep, trial.name):
        return  # the STOP came as the run ended anyway
    sweep.write_json(folder / layout.STATE, {"state": "TERMINATED", **started,
                                             "ended_at": time.time()})


def trial_task(sweep: SweepFolder, spec: SweepSpec, trial: Trial, trial_id: str,
               stage: int) -> TrialTask:
    """What the trial's workers run: its config, folder and the spec's blocks; for a sweep in
    a bucket, the trial's URI there and its upload lineage (sweep.trial_sync)."""
    res = spec.resources
    in_bucket = {} if sweep.remote is None else {
        "trial_uri": sweep.remote.child(f"{layout.TRIALS}/{trial.name}").uri,
        "trial_id": trial_id, "upload_every_s": res.upload_every_s}
    return TrialTask(config=trial.config, trial_dir=str(layout.trial_dir(sweep.local,
                                                                         trial.name)),
                     threads=max(1, round(res.cpus_per_worker)), stage=stage,
                     stages=spec.stages, schedule=spec.schedule,
                     attack_eval=spec.attack_eval, **in_bucket)


def train_run(spec: SweepSpec, task: TrialTask, name: str, storage_path: str):
    """The trial's Ray Train run: ``resources.workers`` DDP ranks (gloo on CPU, NCCL on GPU)
    running ``task``, named ``name`` so that fitting it again resumes it, retrying a failed
    worker group ``resources.worker_retries`` times and reporting each result to Tune."""
    import ray.train
    from ray.tune.integration.ray_train import TuneReportCallback

    # TorchTrainer's parts without torch in this process (sweep.train_loop): training,
    # certification, their imports and torch itself load in Train's workers and controller.
    from smoothadv.sweep.train_loop import TorchBackendConfig, train_loop_per_worker, trainer_class

    res = spec.resources
    gpus = res.gpus_per_worker
    # Train reads this where fit() runs and hands it to its controller: how long the workers
    # may wait for resources (e.g. an autoscaler's new node) before the trial fails.
    os.environ["RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"] = str(res.start_timeout_s)
    return trainer_class()(  # = TorchTrainer
        train_loop_per_worker,
        backend_config=TorchBackendConfig(backend="nccl" if gpus > 0 else "gloo"),
        train_loop_config={"task": task},
        scaling_config=ray.train.ScalingConfig(
            num_workers=res.workers, use_gpu=gpus > 0,
            resources_per_worker={"CPU": res.cpus_per_worker, **({"GPU": gpus} if gpus else {})},
        ),
        run_config=ray.train.RunConfig(
            name=name, storage_path=storage_path,
            failure_config=ray.train.FailureConfig(max_failures=res.worker_retries,
                                                   controller_failure_limit=3),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            callbacks=[TuneReportCallback()],
        ),
    )


def _stopped_early(sweep: SweepFolder, name: str) -> bool:
    """Whether the sweep's schedule stopped trial ``name`` (sweep.early_stopping: the sweep driver
    decides and records it in schedule.json); if so, its state.json says STOPPED and why."""
    from smoothadv.common.schedule_file import stopped_trials
    from smoothadv.sweep.early_stopping import write_stopped

    sweep.refresh(sweep.local / layout.SCHEDULE)
    why = stopped_trials(sweep.local).get(name)
    if why is None:
        return False
    write_stopped(sweep, layout.trial_dir(sweep.local, name) / layout.STATE, why)
    return True


def root_cause(error: BaseException) -> BaseException:
    """The innermost cause of a Train failure (the worker's exception, not Ray's wrapper)."""
    seen = set()
    while id(error) not in seen:
        seen.add(id(error))
        inner = getattr(error, "worker_failures", None) or {}
        inner = next(iter(inner.values()), None) if isinstance(inner, dict) else None
        inner = inner or error.__cause__
        if inner is None:
            break
        error = inner
    return error
