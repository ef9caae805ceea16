"""Run and resume a sweep on Ray: Tune expands the trials; each trial's driver runs a Ray Train
``TorchTrainer`` (V2; built from sweep.train_loop so the driver imports no torch) whose workers
train, certify and report (sweep.trial_worker).

Ray facts relied on (Ray 2.60; docs/reference-facts.md): Train resumes a run when ``fit()`` is
called again with the same (storage_path, name), so the Train run is named after the Tune trial
id; ``Tuner.restore(resume_errored=True)`` keeps trial ids. The trial drivers ask Ray for no CPU
(DRIVER_RESOURCES), so the workers' resources are the real budget.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import time
import traceback
from pathlib import Path
from typing import Any

import yaml
from smoothadv.common import layout, stage_record
from smoothadv.common.atomic import atomic_write_bytes
from smoothadv.common.errors import UserError
from smoothadv.common.records import read_driver, read_state
from smoothadv.common.schedule_record import read_schedule
from smoothadv.sweep import driver_record, processes, staging, trackers, trial_states, trust
from smoothadv.sweep.inputs import check_inputs, with_absolute_paths
from smoothadv.sweep.param_space import param_space, trial_name, trial_of
from smoothadv.sweep.spec import SweepSpec, Trial, load_spec
from smoothadv.sweep.status import (
    STALE_S,
    driver_alive,
    heartbeat_age,
    parse_sweep_yaml,
    read_sweep_spec,
)
from smoothadv.sweep.storage import SweepFolder, open_sweep, read_sweep
from smoothadv.sweep.train_loop import NO_STATE_API

# What a trial's driver (Tune's function, which only waits on its Train run) asks Ray for: no
# CPU, only its memory. A CPU sliver would leave fragments: once a node dies, the restarted
# trials' drivers pile onto the survivors, and their slivers keep a whole-CPU worker group
# from fitting where its CPUs are free (2 drivers on a 1-CPU node: 0.98 CPU left for a
# 0.99-CPU worker). Memory is a logical Ray resource too; 256 MiB covers a driver's ~130 MiB.
DRIVER_RESOURCES = {"CPU": 0, "memory": 256 * 1024**2}
OBJECT_STORE_BYTES = 256 * 1024**2  # trials pass configs and metrics only
TUNE_TRIAL_ID = re.compile(r"[0-9a-f]{5}_[0-9]{5}")  # Tune's trial ids: 89eca_00008


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:300]


def trial_driver(param: dict[str, Any], *, sweep_dir: str) -> None:
    """One Tune trial (Tune's trial name names it: sweep.param_space): build and fit its Ray
    Train run (a TorchTrainer whose driver side loads no torch: sweep.train_loop) on the
    trial's config; record the outcome in state.json. ``sweep_dir`` is the sweep's folder
    or its URI in a bucket (sweep.storage)."""
    import ray.train
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback
    from smoothadv.common.provenance import software

    # TorchTrainer's parts without torch in this process (sweep.train_loop): training,
    # certification, their imports and torch itself load in Train's workers and controller.
    from smoothadv.sweep.train_loop import TorchBackendConfig, train_loop_per_worker, trainer_class

    sweep = open_sweep(sweep_dir)
    spec = parse_sweep_yaml(sweep.read_text(layout.SPEC), f"{sweep.where}/{layout.SPEC}")
    trial = trial_of(tune.get_context().get_trial_name(), param, spec)
    res = spec.resources
    trial_id = tune.get_context().get_trial_id()
    folder = layout.trial_dir(sweep.local, trial.name)
    sweep.write_json(folder / layout.TRIAL_INFO, {"name": trial.name, "params": trial.params,
                                                  "provenance": software()})
    if spec.schedule is not None and _stopped_early(sweep, trial.name):
        return  # stopped before Tune saved it so (a resumed sweep): it stays stopped
    started = {"trial_id": trial_id, "started_at": time.time()}  # when Tune started the driver
    sweep.write_json(folder / layout.STATE, {"state": "RUNNING", **started})
    in_bucket = {} if sweep.remote is None else {
        "trial_uri": sweep.remote.child(f"{layout.TRIALS}/{trial.name}").uri,
        "trial_id": trial_id, "upload_every_s": res.upload_every_s}
    gpus = res.gpus_per_worker
    # Train reads this where fit() runs and hands it to its controller: how long the workers
    # may wait for resources (e.g. an autoscaler's new node) before the trial fails.
    os.environ["RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"] = str(res.start_timeout_s)
    trainer = trainer_class()(  # = TorchTrainer: DDP over gloo on CPU, NCCL on GPU
        train_loop_per_worker,
        backend_config=TorchBackendConfig(backend="nccl" if gpus > 0 else "gloo"),
        train_loop_config={"config": trial.config.to_dict(), "trial_dir": str(folder),
                           "threads": max(1, round(res.cpus_per_worker)),
                           "attack_eval": spec.to_dict().get("attack_eval"),
                           "stage": param.get("stage", 0), "stages": spec.to_dict().get("stages"),
                           "schedule": spec.to_dict().get("schedule"), **in_bucket},
        scaling_config=ray.train.ScalingConfig(
            num_workers=res.workers, use_gpu=gpus > 0,
            resources_per_worker={"CPU": res.cpus_per_worker, **({"GPU": gpus} if gpus else {})},
        ),
        run_config=ray.train.RunConfig(
            name=f"{trial.name}-{trial_id}",
            storage_path=f"{sweep.where}/{layout.TRAIN}",
            failure_config=ray.train.FailureConfig(max_failures=res.worker_retries,
                                                   controller_failure_limit=3),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            callbacks=[TuneReportCallback()],
        ),
    )
    try:
        trainer.fit()
    except BaseException as e:
        if spec.schedule is not None and _stopped_early(sweep, trial.name):
            return  # the schedule's STOP ended the Train run
        # A stopped or dead driver takes the Train run down with it: not the trial's failure.
        sweep.refresh(sweep.local / layout.DRIVER)
        state = "ERROR" if driver_alive(sweep.local) else "INTERRUPTED"
        error = {"error": _first_line(_root_cause(e))} if state == "ERROR" else {}
        sweep.write_json(folder / layout.STATE, {"state": state, **started, **error,
                                                 "ended_at": time.time()})
        raise
    await_train_results_in_tune()
    if spec.schedule is not None and _stopped_early(sweep, trial.name):
        return  # the STOP came as the run ended anyway
    sweep.write_json(folder / layout.STATE, {"state": "TERMINATED", **started,
                                             "ended_at": time.time()})


def await_train_results_in_tune(timeout_s: float = 120.0) -> None:
    """Return only once the Tune trial has taken every result Train sent it (call it in a
    Tune function after ``trainer.fit()``). Ray 2.60 deadlocks the trial otherwise: Train's
    TuneReportCallback hands results over through a queue actor that the trial's main thread
    polls between Tune's steps, moving each into a one-slot thread queue; a returning
    function puts its closing (duplicate) result into that slot, and if Train's last result
    still waits in the actor queue then, the main thread blocks forever putting it into the
    full slot (seen in a sweep logging to W&B, whose slow result callbacks widen the gap)."""
    from ray.train._internal.session import get_session

    session = get_session()
    handover = getattr(session, "_inter_actor_queue", None)
    if handover is None:
        return
    deadline = time.monotonic() + timeout_s
    while not handover.empty() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)  # the main thread's take-then-put of the last result is two statements


def _stopped_early(sweep: SweepFolder, name: str) -> bool:
    """Whether the sweep's schedule stopped trial ``name`` (sweep.scheduler: the sweep driver
    decides and records it in schedule.json); if so, its state.json says STOPPED and why."""
    from smoothadv.common.schedule_record import stopped_trials
    from smoothadv.sweep.scheduler import write_stopped

    sweep.refresh(sweep.local / layout.SCHEDULE)
    why = stopped_trials(sweep.local).get(name)
    if why is None:
        return False
    write_stopped(sweep, layout.trial_dir(sweep.local, name) / layout.STATE, why)
    return True


def _root_cause(error: BaseException) -> BaseException:
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


def is_local(address: str | None) -> bool:
    """No cluster named (neither ``--address`` nor RAY_ADDRESS): Ray starts on this machine."""
    return not (address or os.environ.get("RAY_ADDRESS"))


# What a local Ray's processes inherit (see set_local_ray_env).
LOCAL_RAY_ENV = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
                 "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5"}


def set_local_ray_env(dashboard: bool = False) -> None:
    """The environment a local Ray must start with (its processes inherit it): one machine has
    no spot preemption to watch, so each trial is spared that actor process; a Train controller
    polls its workers every 2 s by default, so a finished trial idles about 5 s before the next
    starts (0.5 s costs nothing locally); without a dashboard there is no state API for Ray
    Train's placement-group cleaner (sweep.train_loop.trainer_class)."""
    for key, value in LOCAL_RAY_ENV.items():
        os.environ.setdefault(key, value)
    if dashboard:
        os.environ.pop(NO_STATE_API, None)
    else:
        os.environ[NO_STATE_API] = "1"


def init_ray(address: str | None, dashboard: bool = False) -> list[processes.Process]:
    """Join ``address`` (or RAY_ADDRESS); with neither, start Ray locally on 127.0.0.1 (its
    dashboard only when asked: it costs a dozen processes on a small machine). Returns the Ray
    processes this call started (to end them if this driver dies)."""
    import ray

    if ray.is_initialized():  # e.g. a test session sharing one local cluster
        return []
    if not is_local(address):
        try:
            ray.init(address=address, log_to_driver=False)
        except ConnectionError as e:
            raise UserError(f"--address {address or os.environ['RAY_ADDRESS']}: cannot "
                            f"connect to a Ray cluster ({_first_line(e)})") from None
        return []
    set_local_ray_env(dashboard)
    from ray._private import ray_constants

    # Ray binds its servers (GCS, raylet, workers, agents, metrics) to loopback only when the
    # node's IP is loopback, and on Linux it swaps a loopback _node_ip_address for the machine's
    # address unless it believes it runs on macOS/Windows (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0,
    # read once when ray is imported). That belief for this call only: the variable itself would
    # make any `ray start --address` that inherits it refuse to join (tests/test_local_ray_ports).
    cluster_mode = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        # address="local": a new Ray of our own, never a cluster some `ray start` left here
        ray.init(address="local", _node_ip_address="127.0.0.1", dashboard_host="127.0.0.1",
                 object_store_memory=OBJECT_STORE_BYTES, log_to_driver=False,
                 include_dashboard=dashboard)
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = cluster_mode
    return processes.descendants(os.getpid())


def check_storage(sweep: SweepFolder) -> None:
    """Every node must reach the sweep's storage: on a multi-node cluster a folder is probed
    from each node (it must be a mount they share); a bucket is read from every node (each
    needs its credentials), on one machine too."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if sweep.remote is None and len(nodes) <= 1:
        return
    marker = f".storage-probe-{os.getpid()}"
    sweep.local.mkdir(parents=True, exist_ok=True)
    (sweep.local / marker).write_text(socket.gethostname())
    try:
        sweep.push(sweep.local / marker)
    except OSError as e:
        (sweep.local / marker).unlink()
        raise UserError(f"--storage {sweep.where}: cannot write there "
                        f"({_first_line(e)})") from None

    @ray.remote(num_cpus=0)
    def sees(where: str) -> str | None:
        try:
            return None if open_sweep(where).read_text(marker) else "empty"
        except Exception as e:  # noqa: BLE001 (any failure to read is the answer)
            return _first_line(e)

    try:
        probes = [sees.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
            n["NodeID"], soft=False)).remote(sweep.where) for n in nodes]
        # a node by its name (`ray start --node-name`; its IP unless named)
        blind = {n.get("NodeName") or n["NodeManagerAddress"]: why
                 for n, why in zip(nodes, ray.get(probes), strict=True) if why}
    finally:
        sweep.unlink(sweep.local / marker)
    if blind and sweep.remote is None:
        raise UserError(f"--storage {sweep.where}: a local path not visible on nodes "
                        f"{sorted(blind)}; multi-node sweeps need storage every node mounts "
                        "(e.g. NFS) or a bucket (s3://…)")
    if blind:
        node, why = next(iter(sorted(blind.items())))
        raise UserError(f"--storage {sweep.where}: nodes {sorted(blind)} cannot read the "
                        f"bucket ({node}: {why}); give every node its credentials")


def check_fits(spec: SweepSpec) -> None:
    """Refuse a trial larger than the whole cluster (Train would wait for it forever); on an
    autoscaling cluster the total can grow, so this only refuses what no node set offers now."""
    import ray

    res = spec.resources
    total = ray.cluster_resources()
    needs = {"CPU": res.workers * res.cpus_per_worker, "GPU": res.workers * res.gpus_per_worker}
    for kind, need in needs.items():
        if need > total.get(kind, 0) + 1e-9:
            raise UserError(
                f"resources: one trial needs {need:g} {kind}s ({res.workers} workers) but this "
                f"Ray cluster has {total.get(kind, 0):g}; lower resources.workers or "
                f"resources.{kind.lower()}s_per_worker")


def concurrency(spec: SweepSpec, max_concurrent: int | None) -> int:
    """Trials run at once: ``--max-concurrent``, else ``resources.max_concurrent``, else as
    many as the connected cluster holds now. Tune cannot see the Train workers' resources (each
    trial's driver asks it for memory only, see DRIVER_RESOURCES), so without this bound it
    would start every trial's driver at once and their worker groups would queue for the same
    CPUs and GPUs."""
    import ray

    if max_concurrent is not None and max_concurrent < 1:
        raise UserError(f"--max-concurrent: must be ≥ 1, got {max_concurrent}")
    if max_concurrent or spec.resources.max_concurrent:
        return max_concurrent or spec.resources.max_concurrent
    total = ray.cluster_resources()
    fits = spec.resources.trials_that_fit(total.get("CPU", 0), total.get("GPU", 0))
    if fits == 0:  # an autoscaling cluster before its workers come up
        print("the cluster holds no trial yet: running one at a time; on an autoscaling "
              "cluster give the ceiling with --max-concurrent or resources.max_concurrent",
              flush=True)
    return max(1, fits)


def _tuner_trainable(sweep: SweepFolder):
    from ray import tune

    return tune.with_resources(tune.with_parameters(trial_driver, sweep_dir=sweep.where),
                               DRIVER_RESOURCES)


def _tuner(sweep: SweepFolder, spec: SweepSpec, trials: list[Trial], stage: int,
           at_once: int, verbose: int, callbacks: list):
    """A new Tune experiment running ``trials`` (in a staged sweep: their ``stage``), at most
    ``at_once`` at a time, logging to the trackers' ``callbacks``; with a ``schedule`` block,
    trials that train (stage ≤ 1) are stopped early by sweep.scheduler."""
    from ray import tune

    scheduler = None
    if spec.schedule is not None and stage <= 1:
        from smoothadv.sweep.scheduler import EnvelopeScheduler

        scheduler = EnvelopeScheduler(sweep.where, spec.schedule.record())
    from smoothadv.sweep.signing_callback import TuneStateSigner

    name = staging.tune_name(stage)
    tuner = tune.Tuner(
        _tuner_trainable(sweep),
        param_space=param_space(trials, stage),
        tune_config=tune.TuneConfig(
            max_concurrent_trials=at_once,
            trial_name_creator=trial_name,
            trial_dirname_creator=trial_name,
            reuse_actors=True,  # every trial's driver function asks the same resources
            scheduler=scheduler,  # None: Tune's FIFO, every trial runs to its end
        ),
        run_config=tune.RunConfig(
            name=name, storage_path=sweep.where, verbose=verbose,
            failure_config=tune.FailureConfig(max_failures=spec.resources.trial_retries),
            # the --log-to trackers (sweep.trackers), and the signer of Tune's restore point
            callbacks=[*callbacks, TuneStateSigner(sweep, name)],
        ),
    )
    trust.sign_tune_state(sweep, name)  # the tuner.pkl it just wrote
    return tuner


def _run_stages(sweep: SweepFolder, spec: SweepSpec, trials: list[Trial], stage: int,
                driver: dict[str, Any], *, address: str | None, dashboard: bool,
                max_concurrent: int | None, verbose: int, callbacks: list) -> int:
    """Run ``trials`` in a new Tune experiment (their ``stage``; 0: an unstaged sweep), then,
    in a staged sweep whose stage finished without errors, each later stage
    (_later_stages); returns the errored trials."""
    at_once = concurrency(spec, max_concurrent)
    errors = _fit(_tuner(sweep, spec, trials, stage, at_once, verbose, callbacks), sweep,
                  driver, [t.name for t in trials])
    return _later_stages(sweep, spec, stage, errors, driver, address=address,
                         dashboard=dashboard, max_concurrent=max_concurrent, verbose=verbose,
                         callbacks=callbacks)


def _later_stages(sweep: SweepFolder, spec: SweepSpec, stage: int, errors: int,
                  driver: dict[str, Any], *, address: str | None, dashboard: bool,
                  max_concurrent: int | None, verbose: int, callbacks: list) -> int:
    """A staged sweep, once ``stage`` finished without errors: choose the next stage's trials
    (sweep.staging) and run them, until no stage is left; returns the errored trials."""
    while spec.stages is not None and errors == 0:
        stage, trials = staging.next_stage(sweep, spec, stage)
        if not trials:
            print(staging.summary(sweep), flush=True)
            break
        driver["ray_processes"] = init_ray(address, dashboard)
        at_once = concurrency(spec, max_concurrent)
        print(f"{spec.name}: stage {stage}: {len(trials)} trials, at most {at_once} at once",
              flush=True)
        errors = _fit(_tuner(sweep, spec, trials, stage, at_once, verbose, callbacks), sweep,
                      driver, [t.name for t in trials])
    return errors


def _sweep_of(spec: SweepSpec, storage: str) -> SweepFolder:
    return open_sweep(f"{storage.rstrip('/')}/{spec.name}" if "://" in storage
                      else Path(storage).expanduser().resolve() / spec.name)


def _check_local_storage(sweep: SweepFolder, storage: str) -> None:
    """A --storage folder (or its sweep folder) that is a file, or under one, or that this
    user cannot create: one line before Ray starts or anything is written."""
    if sweep.remote is not None:
        return
    path = sweep.local
    while not path.exists() and path != path.parent:
        path = path.parent
    if not path.is_dir():
        raise UserError(f"--storage {storage}: {path} is a file, not a folder")
    if not os.access(path, os.W_OK | os.X_OK) and path != sweep.local:
        raise UserError(f"--storage {storage}: cannot create folders in {path} (permission "
                        "denied)")


def run_sweep(spec_path: str, overrides: list[str], *, address: str | None, storage: str,
              max_concurrent: int | None, verbose: int = 1, dashboard: bool = False,
              log_to: list[str] = (), max_trials: int | None = None) -> int:
    """Validate the spec, write it into the sweep folder, run every trial (logging to the
    trackers of ``log_to``, sweep.trackers); returns the number of errored trials. One
    driver at a time (sweep.driver_record): a second is refused before it writes anything."""
    spec = with_absolute_paths(load_spec(spec_path, overrides, max_trials))
    trials = spec.trials()
    local = is_local(address)
    if local:  # on a cluster the data lives on the workers' nodes, not necessarily here
        try:
            check_inputs(trials)
        except UserError as e:
            raise UserError(f"{spec_path}: {e}") from None
    sweep = _sweep_of(spec, storage)
    _check_local_storage(sweep, storage)
    sweep.check_writable()  # a missing bucket or its credentials: before Ray starts
    if max_concurrent is not None and max_concurrent < 1:
        raise UserError(f"--max-concurrent: must be ≥ 1, got {max_concurrent}")
    loggers = trackers.callbacks(list(log_to), sweep.local, spec.name)  # a missing package: now
    fresh = not sweep.local.exists()
    try:
        with driver_record.locked(sweep):
            if sweep.exists(layout.TUNE) or sweep.exists(layout.SPEC):
                raise UserError(f"{sweep.where}: a sweep already ran here; continue it with "
                                f"`smoothadv sweep resume {sweep.where}` or give another "
                                "--storage/name")
            return _start(sweep, spec, trials, address=address, dashboard=dashboard,
                          max_concurrent=max_concurrent, verbose=verbose, loggers=loggers)
    except UserError:
        if fresh and sweep.local.is_dir() and not sweep.exists(layout.SPEC):
            driver_record.remove_lock_file(sweep)  # a refused sweep leaves no folder
            with contextlib.suppress(OSError):
                sweep.local.rmdir()
        raise


def _start(sweep: SweepFolder, spec: SweepSpec, trials: list[Trial], *, address: str | None,
           dashboard: bool, max_concurrent: int | None, verbose: int, loggers: list) -> int:
    """run_sweep once it holds the sweep: start Ray, check, write the spec, run."""
    started = init_ray(address, dashboard)
    if is_local(address):
        check_fits(spec)  # before anything is written: a refused sweep leaves no folder
    check_storage(sweep)
    driver = driver_record.this_driver(started)
    release = driver_record.claim(sweep, driver)
    try:
        spec_yaml = yaml.safe_dump(spec.to_dict(), sort_keys=False).encode()
        atomic_write_bytes(sweep.local / layout.SPEC, lambda f: f.write(spec_yaml))
        sweep.push(sweep.local / layout.SPEC)
        at_once = concurrency(spec, max_concurrent)
        print(f"{spec.name}: {len(trials)} trials, at most {at_once} at once", flush=True)
        for line in trackers.describe(loggers, sweep.local):
            print(line, flush=True)
        stage = 0
        if spec.stages is not None:
            stage = 1
            staging.begin(sweep, stage, {t.name: {"stage": stage, "why": ""} for t in trials})
            print(f"{spec.name}: stage 1 of {stage_record.LAST}: train and screen every trial "
                  f"(n = {spec.stages.n}, every {spec.stages.skip}th image)", flush=True)
        return _run_stages(sweep, spec, trials, stage, driver, address=address,
                           dashboard=dashboard, max_concurrent=max_concurrent, verbose=verbose,
                           callbacks=loggers)
    finally:
        release()


def resume_sweep(sweep_dir: str, *, restart_errored: bool, address: str | None,
                 max_concurrent: int | None = None, verbose: int = 1,
                 dashboard: bool = False, log_to: list[str] = ()) -> int:
    """Continue a sweep: unfinished trials go on, errored ones resume from their checkpoint
    (or restart from scratch), finished ones are untouched; returns the number errored. It
    logs to the trackers the sweep logged to so far and to those of ``log_to``. A sweep whose
    driver died before Tune saved any state starts its (current stage's) experiment anew."""
    sweep = read_sweep(sweep_dir)
    folder = sweep.local
    spec = read_sweep_spec(folder)
    # every record the resume reads, checked before anything starts (one line naming a bad one)
    trial_states.recorded_states(folder, [t.name for t in spec.trials()])
    read_schedule(folder / layout.SCHEDULE)
    with driver_record.locked(sweep):
        stage, trials = (0, spec.trials()) if spec.stages is None else \
            staging.current(sweep, spec)
        if stage > stage_record.LAST:
            print(staging.summary(sweep))
            return 0
        statuses = trial_states.tune_statuses(sweep, staging.tune_name(stage))
        if spec.stages is None and not _left_to_run(sweep, trials, statuses):
            print(f"{sweep.where}: every trial finished; nothing to resume")
            return 0
        trust.verify_tune_state(sweep, staging.tune_name(stage))  # before Ray unpickles it
        trackers.check(list(log_to), folder)
        end_leftovers(sweep)
        started = init_ray(address, dashboard)
        if is_local(address):
            check_fits(spec)
        check_storage(sweep)
        driver = driver_record.this_driver(started)
        release = driver_record.claim(sweep, driver)
        try:
            return _resume(sweep, spec, stage, trials, driver, statuses,
                           restart_errored=restart_errored,
                           address=address, dashboard=dashboard,
                           max_concurrent=max_concurrent, verbose=verbose, log_to=log_to)
        finally:
            release()


def _left_to_run(sweep: SweepFolder, trials: list[Trial], tune: dict[str, str]) -> list[str]:
    """The trials a resume would run (sweep.trial_states.will_run; no driver runs), given
    Tune's statuses of them (``tune``)."""
    recorded = trial_states.recorded_states(sweep.local, [t.name for t in trials])
    return trial_states.will_run({t.name: trial_states.reconciled(
        recorded[t.name], tune.get(t.name), False) for t in trials})


def _resume(sweep: SweepFolder, spec: SweepSpec, stage: int, trials: list[Trial],
            driver: dict[str, Any], statuses: dict[str, str], *, restart_errored: bool,
            address: str | None, dashboard: bool, max_concurrent: int | None, verbose: int,
            log_to: list[str]) -> int:
    """resume_sweep once it holds the sweep and Ray runs: reconcile the trials' records with
    Tune's statuses of them (``statuses``, sweep.trial_states), restore Tune's experiment (or
    start one: none was made) and run it, then any later stage."""
    from ray import tune
    from smoothadv.sweep.signing_callback import TuneStateSigner

    folder = sweep.local
    tune_dir = f"{sweep.where}/{staging.tune_name(stage)}"
    trial_states.settle_before_resume(sweep, statuses)
    if not tune.Tuner.can_restore(tune_dir):  # the driver died before it made the Tuner
        return _run_stages(sweep, spec, trials, stage, driver, address=address,
                           dashboard=dashboard, max_concurrent=max_concurrent, verbose=verbose,
                           callbacks=trackers.for_resume([], list(log_to), folder, spec.name))
    at_once = concurrency(spec, max_concurrent)
    try:
        # Errored trials resume, keeping their Tune trial ids; with --restart-errored their
        # outputs and Train runs are moved aside first (_clear_errored), so they start afresh
        # (Tune's own restart re-creates each trial from its stored record, which can fail).
        # The param space is given again: Tune keeps only its keys, and a driver killed before
        # Tune saved any experiment state leaves a Tuner that would restart with an empty one.
        tuner = tune.Tuner.restore(tune_dir, _tuner_trainable(sweep), resume_errored=True,
                                   param_space=param_space(trials, stage))
    except ModuleNotFoundError as e:  # its restore point holds the callback of a tracker
        kind = (e.name or "").split(".")[0]
        if kind not in trackers.TRACKERS:
            raise
        raise UserError(f"{sweep.where}: this sweep logs to {kind}, which is not installed; "
                        f"pip install 'smoothadv[{kind}]'") from None
    # Tune.restore keeps the first run's TuneConfig and has no argument for it: set the bound
    # for this cluster on the restored config (the one attribute Tune reads when it fits).
    tuner._local_tuner._tune_config.max_concurrent_trials = at_once
    # It keeps the first run's scheduler too (pickled without its state: sweep.scheduler reads
    # schedule.json again); point it at the sweep folder as named now (it may have moved).
    scheduler = tuner._local_tuner._tune_config.scheduler
    if hasattr(scheduler, "sweep_dir"):
        scheduler.sweep_dir = sweep.where
    # Its RunConfig too, callbacks included: keep logging to the sweep's trackers, add --log-to.
    run_config = tuner._local_tuner._run_config
    run_config.callbacks = trackers.for_resume(run_config.callbacks, list(log_to), folder,
                                               spec.name)
    trackers_only = [c for c in run_config.callbacks if not isinstance(c, TuneStateSigner)]
    run_config.callbacks = [*trackers_only, TuneStateSigner(sweep, staging.tune_name(stage))]
    print(f"{spec.name}: resuming, at most {at_once} trials at once", flush=True)
    for line in trackers.describe(run_config.callbacks, folder):
        print(line, flush=True)
    if restart_errored:
        _clear_errored(sweep, {n for n, s in statuses.items() if s == "ERROR"})
    errors = _fit(tuner, sweep, driver, [t.name for t in trials])
    return _later_stages(sweep, spec, stage, errors, driver, address=address,
                         dashboard=dashboard, max_concurrent=max_concurrent, verbose=verbose,
                         callbacks=trackers_only)


def _clear_errored(sweep: SweepFolder, errored: set[str]) -> None:
    """Restarting errored trials from scratch (those Tune recorded as errored, ``errored``,
    and those recorded ERROR): move each one's outputs to errored/<trial>.N (kept) and remove
    its Ray Train run (train/<trial>-<Tune trial id>), so that it trains anew."""
    folder = sweep.local
    for state_file in sorted((folder / layout.TRIALS).glob(f"*/{layout.STATE}")):
        state = read_state(state_file) or {}
        trial = state_file.parent
        if state.get("state") != "ERROR" and trial.name not in errored:
            continue
        n = 1
        while sweep.exists(f"{layout.ERRORED}/{trial.name}.{n}"):
            n += 1
        sweep.move(trial, folder / layout.ERRORED / f"{trial.name}.{n}")
        trial_id = state.get("trial_id")
        if isinstance(trial_id, str) and TUNE_TRIAL_ID.fullmatch(trial_id):  # never a path
            sweep.remove_tree(f"{layout.TRAIN}/{trial.name}-{trial_id}")


def end_leftovers(sweep: SweepFolder) -> None:
    """Before resuming: end the Ray processes a dead driver of this sweep left behind; refuse
    while that driver still runs."""
    info = read_driver(sweep.local / layout.DRIVER)
    if info is None:
        return
    sweep_dir = sweep.where
    alive = driver_alive(sweep.local)
    if not trust.vouched(info):  # not this user's driver's record: it ends no process
        if alive:
            raise UserError(f"{sweep.local / layout.DRIVER}: a driver whose record is not "
                            f"signed by your smoothadv key (pid {info.get('pid')} on "
                            f"{info.get('host')}) looks alive; wait until it ends, or remove "
                            "the record if you know it is gone")
        print(f"{sweep_dir}: {layout.DRIVER} is not signed by your smoothadv key; no process "
              "it names was ended")
    elif alive:
        raise UserError(f"{sweep_dir}: its driver (pid {info.get('pid')} on {info.get('host')}) "
                        "is still running; stop it first with `smoothadv sweep stop`")
    elif info.get("host") == socket.gethostname():
        recorded = [(pid, start) for pid, start in info.get("ray_processes", [])]
        ended = processes.end([p for p in recorded if processes.is_ray(p)])
        if ended:
            print(f"{sweep_dir}: ended {ended} Ray processes left by the interrupted driver")
    else:  # its processes were on a machine that is gone: nothing to end from here
        print(f"{sweep_dir}: the driver on {info.get('host')} is gone (last heartbeat "
              f"{heartbeat_age(info):.0f} s ago)")
    sweep.unlink(sweep.local / layout.DRIVER)


def stop_sweep(sweep_dir: str, grace_s: float = 30.0) -> None:
    """Stop a running sweep as Ctrl-C would (Tune saves its state, trials keep their
    checkpoints), then end any Ray process its driver leaves behind."""
    sweep = read_sweep(sweep_dir)
    folder = sweep.local
    if not (folder / layout.SPEC).exists():
        raise UserError(f"{folder}: not a sweep folder (no {layout.SPEC})")
    info = read_driver(folder / layout.DRIVER)
    if info is None:
        print(f"{sweep.where}: no driver is running")
        return
    if info.get("host") != socket.gethostname():
        if driver_alive(folder):
            raise UserError(f"{folder}: its driver runs on {info.get('host')} (its heartbeat is "
                            f"fresh); run `smoothadv sweep stop` there, or wait until the "
                            f"heartbeat is {STALE_S:.0f} s old if that machine is gone")
        end_leftovers(sweep)
        print(f"{sweep.where}: stopped; continue with `smoothadv sweep resume {sweep.where}`")
        return
    if not trust.vouched(info):
        raise UserError(f"{folder / layout.DRIVER}: not signed by your smoothadv key, so no "
                        "process it names is ended; if a driver of yours runs this sweep, stop "
                        "it yourself (Ctrl-C or kill -INT its pid)")
    if driver_alive(folder):  # read_driver checked pid and start
        driver = (info["pid"], info["start"])
        if not processes.is_sweep_driver(driver):
            raise UserError(f"{folder / layout.DRIVER}: pid {driver[0]} is alive but runs no "
                            "smoothadv command; no process ended")
        os.kill(driver[0], signal.SIGINT)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and processes.alive(driver):
            time.sleep(0.5)
        processes.end([driver])
    sweep.refresh(folder / layout.DRIVER)
    end_leftovers(sweep)
    print(f"{sweep.where}: stopped; continue with `smoothadv sweep resume {sweep.where}`")


class Terminated(KeyboardInterrupt):
    """The driver got SIGTERM (Kubernetes deleting its pod, SLURM ending its job) and stopped
    the sweep as Ctrl-C does; the command line exits 143 (128 + SIGTERM)."""


def _stop_on_sigterm() -> list[bool]:
    """Make SIGTERM stop the sweep like Ctrl-C: Tune's graceful-stop handler (it listens to
    SIGUSR1 as to SIGINT) saves the experiment state and ends the trials. Returns a flag that
    is set once the signal came."""
    got = [False]
    before_tune = signal.getsignal(signal.SIGUSR1)

    def forward(signum, frame):
        got[0] = True
        if signal.getsignal(signal.SIGUSR1) is before_tune:  # Tune has not started yet
            raise Terminated
        os.kill(os.getpid(), signal.SIGUSR1)

    signal.signal(signal.SIGTERM, forward)
    return got


def _fit(tuner, sweep: SweepFolder, driver: dict[str, Any], names: list[str]) -> int:
    """Run the Tuner (its trials: ``names``); returns the number of errored trials. Stopped
    early (Ctrl-C, `sweep stop`, SIGTERM), Tune saves its state and returns: that raises
    KeyboardInterrupt (on SIGTERM :class:`Terminated`) after the summary. ``driver`` is the
    driver's record (sweep.driver_record), rewritten with the Ray processes it started."""
    planned = len(names)
    sweep.write_json(sweep.local / layout.DRIVER,
                     trust.signed({**driver, "heartbeat": time.time()}))
    terminated = _stop_on_sigterm()
    try:
        results = tuner.fit()
    except Exception:
        traceback.print_exc()
        raise
    if driver["ray_processes"]:  # our own local cluster: end its actors before reading states
        import ray

        ray.shutdown()
    errors = results.num_errors
    finished = trial_states.settle_after_fit(
        sweep, {Path(r.path).name: _first_line(r.error) for r in results if r.error is not None},
        names)
    sweep_dir = sweep.where
    if finished + errors < planned:
        print(f"{sweep_dir}: interrupted with {finished} of {planned} trials finished, {errors} "
              f"errored; continue with `smoothadv sweep resume {sweep_dir}`")
        raise Terminated if terminated[0] else KeyboardInterrupt
    from smoothadv.common.schedule_record import stopped_trials

    stopped = len(set(stopped_trials(sweep.local)) & set(names))
    print(f"{sweep_dir}: {planned} trials, {errors} errored"
          + (f", {stopped} stopped early by the schedule" if stopped else "")
          + (f"; see `smoothadv sweep status {sweep_dir}`" if errors else ""))
    return errors
