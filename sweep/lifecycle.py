"""A sweep's life: run it, resume it, stop it (``smoothadv sweep run/resume/stop``).

One driver at a time holds a sweep (sweep.driver_record). Running writes the validated spec
(sweep.yaml), starts or joins Ray (sweep.local_ray), checks the cluster (sweep.cluster_checks)
and fits the Tune experiment (sweep.experiment), stage after stage in a staged sweep
(sweep.staged_sweep). Resuming first reconciles the trials' records with Tune's statuses of them
(sweep.trial_states), then restores the experiment.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smoothadv.common import layout, stages_file
from smoothadv.common.atomic import atomic_write_bytes
from smoothadv.common.errors import UserError
from smoothadv.common.records import read_driver, read_state
from smoothadv.common.schedule_file import read_schedule
from smoothadv.sweep import (
    driver_record,
    experiment,
    processes,
    staged_sweep,
    trackers,
    trial_states,
    trust,
)
from smoothadv.sweep.cluster_checks import check_fits, check_storage, concurrency
from smoothadv.sweep.grid import Trial
from smoothadv.sweep.inputs import check_inputs, with_absolute_paths
from smoothadv.sweep.local_ray import init_ray, is_local
from smoothadv.sweep.spec import SweepSpec, load_spec
from smoothadv.sweep.spec_record import spec_yaml
from smoothadv.sweep.status import STALE_S, driver_alive, heartbeat_age, read_sweep_spec
from smoothadv.sweep.storage import SweepFolder, open_sweep, read_sweep

TUNE_TRIAL_ID = re.compile(r"[0-9a-f]{5}_[0-9]{5}")  # Tune's trial ids: 89eca_00008


@dataclass(frozen=True)
class Launch:
    """How the command line asked to run: the cluster (``--address``; None: Ray on this
    machine), ``--dashboard``, ``--max-concurrent`` and the console (``--verbose``): 0, our
    compact view (sweep.console) with Tune silent; 1 or 2, Tune's own reporting at that
    verbosity instead."""

    address: str | None = None
    dashboard: bool = False
    max_concurrent: int | None = None
    verbose: int = 0


def run_sweep(spec_path: str, overrides: list[str], *, storage: str, launch: Launch,
              log_to: list[str] = (), max_trials: int | None = None) -> int:
    """Validate the spec, write it into the sweep folder, run every trial (logging to the
    trackers of ``log_to``, sweep.trackers); returns the number of errored trials. A second
    driver of the same sweep is refused before it writes anything."""
    spec = with_absolute_paths(load_spec(spec_path, overrides, max_trials))
    trials = spec.trials()
    if is_local(launch.address):  # on a cluster the data lives on the workers' nodes
        try:
            check_inputs(trials)
        except UserError as e:
            raise UserError(f"{spec_path}: {e}") from None
    sweep = open_sweep(f"{storage.rstrip('/')}/{spec.name}" if "://" in storage
                       else Path(storage).expanduser().resolve() / spec.name)
    _check_local_storage(sweep, storage)
    sweep.check_writable()  # a missing bucket or its credentials: before Ray starts
    if launch.max_concurrent is not None and launch.max_concurrent < 1:
        raise UserError(f"--max-concurrent: must be ≥ 1, got {launch.max_concurrent}")
    loggers = trackers.callbacks(list(log_to), sweep.local, spec.name)  # a missing package: now
    fresh = not sweep.local.exists()
    try:
        with driver_record.locked(sweep):
            if sweep.exists(layout.TUNE) or sweep.exists(layout.SPEC):
                raise UserError(f"{sweep.where}: a sweep already ran here; continue it with "
                                f"`smoothadv sweep resume {sweep.where}` or give another "
                                "--storage/name")
            return _start(sweep, spec, trials, launch, loggers)
    except UserError:
        if fresh and sweep.local.is_dir() and not sweep.exists(layout.SPEC):
            driver_record.remove_lock_file(sweep)  # a refused sweep leaves no folder
            with contextlib.suppress(OSError):
                sweep.local.rmdir()
        raise


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


@contextlib.contextmanager
def _driving(sweep: SweepFolder, spec: SweepSpec, launch: Launch):
    """Start or join Ray, check the cluster, and hold the sweep as its driver: yields the
    driver's record (sweep.driver_record), released on leaving."""
    started = init_ray(launch.address, launch.dashboard)
    if is_local(launch.address):
        check_fits(spec)  # before anything is written: a refused sweep leaves no folder
    check_storage(sweep)
    driver = driver_record.this_driver(started)
    release = driver_record.claim(sweep, driver)
    try:
        yield driver
    finally:
        release()


def _start(sweep: SweepFolder, spec: SweepSpec, trials: list[Trial], launch: Launch,
           loggers: list) -> int:
    """run_sweep once it holds the sweep: start Ray, check, write the spec, run."""
    with _driving(sweep, spec, launch) as driver:
        text = spec_yaml(spec)
        atomic_write_bytes(sweep.local / layout.SPEC, lambda f: f.write(text))
        sweep.push(sweep.local / layout.SPEC)
        print(f"{spec.name}: {len(trials)} trials, at most "
              f"{concurrency(spec, launch.max_concurrent)} at once", flush=True)
        for line in trackers.describe(loggers, sweep.local):
            print(line, flush=True)
        stage = 0
        if spec.stages is not None:
            stage = 1
            staged_sweep.begin(sweep, stage, {t.name: {"stage": stage, "why": ""} for t in trials})
            print(f"{spec.name}: stage 1 of {stages_file.LAST}: train and screen every trial "
                  f"(n = {spec.stages.n}, every {spec.stages.skip}th image)", flush=True)
        return _run_stages(sweep, spec, trials, stage, driver, launch, loggers)


def _run_stages(sweep: SweepFolder, spec: SweepSpec, trials: list[Trial], stage: int,
                driver: dict[str, Any], launch: Launch, callbacks: list) -> int:
    """Run ``trials`` in a new Tune experiment (their ``stage``; 0: an unstaged sweep), then,
    in a staged sweep whose stage finished without errors, each later stage
    (_later_stages); returns the errored trials."""
    tuner = experiment.new_tuner(sweep, spec, trials, stage,
                                 concurrency(spec, launch.max_concurrent), launch.verbose,
                                 callbacks)
    errors = experiment.fit(tuner, sweep, driver, [t.name for t in trials])
    return _later_stages(sweep, spec, stage, errors, driver, launch, callbacks)


def _later_stages(sweep: SweepFolder, spec: SweepSpec, stage: int, errors: int,
                  driver: dict[str, Any], launch: Launch, callbacks: list) -> int:
    """A staged sweep, once ``stage`` finished without errors: choose the next stage's trials
    (sweep.staged_sweep) and run them, until no stage is left; returns the errored trials."""
    while spec.stages is not None and errors == 0:
        stage, trials = staged_sweep.next_stage(sweep, spec, stage)
        if not trials:
            print(staged_sweep.summary(sweep), flush=True)
            break
        driver["ray_processes"] = init_ray(launch.address, launch.dashboard)
        at_once = concurrency(spec, launch.max_concurrent)
        print(f"{spec.name}: stage {stage}: {len(trials)} trials, at most {at_once} at once",
              flush=True)
        tuner = experiment.new_tuner(sweep, spec, trials, stage, at_once, launch.verbose,
                                     callbacks)
        errors = experiment.fit(tuner, sweep, driver, [t.name for t in trials])
    return errors


def resume_sweep(sweep_dir: str, *, restart_errored: bool, launch: Launch,
                 log_to: list[str] = ()) -> int:
    """Continue a sweep: unfinished trials go on, errored ones resume from their checkpoint
    (or restart from scratch), finished ones are untouched; returns the number errored. It
    logs to the trackers the sweep logged to so far and to those of ``log_to``. A sweep whose
    driver died before Tune saved any state starts its (current stage's) experiment anew."""
    sweep = read_sweep(sweep_dir)
    spec = read_sweep_spec(sweep.local)
    # every record the resume reads, checked before anything starts (one line naming a bad one)
    trial_states.recorded_states(sweep.local, [t.name for t in spec.trials()])
    read_schedule(sweep.local / layout.SCHEDULE)
    with driver_record.locked(sweep):
        stage, trials = (0, spec.trials()) if spec.stages is None else \
            staged_sweep.current(sweep, spec)
        if stage > stages_file.LAST:
            print(staged_sweep.summary(sweep))
            return 0
        statuses = trial_states.tune_statuses(sweep, staged_sweep.tune_name(stage))
        if spec.stages is None and not _left_to_run(sweep, trials, statuses):
            print(f"{sweep.where}: every trial finished; nothing to resume")
            return 0
        trust.verify_tune_state(sweep, staged_sweep.tune_name(stage))  # before Ray unpickles it
        trackers.check(list(log_to), sweep.local)
        end_leftovers(sweep)
        with _driving(sweep, spec, launch) as driver:
            return _resume(sweep, spec, stage, trials, driver, statuses, launch, log_to,
                           restart_errored=restart_errored)


def _left_to_run(sweep: SweepFolder, trials: list[Trial], tune: dict[str, str]) -> list[str]:
    """The trials a resume would run (sweep.trial_states.will_run; no driver runs), given
    Tune's statuses of them (``tune``)."""
    recorded = trial_states.recorded_states(sweep.local, [t.name for t in trials])
    return trial_states.will_run({t.name: trial_states.reconciled(
        recorded[t.name], tune.get(t.name), False) for t in trials})


def _resume(sweep: SweepFolder, spec: SweepSpec, stage: int, trials: list[Trial],
            driver: dict[str, Any], statuses: dict[str, str], launch: Launch,
            log_to: list[str], *, restart_errored: bool) -> int:
    """resume_sweep once it holds the sweep and Ray runs: reconcile the trials' records with
    Tune's statuses of them (``statuses``, sweep.trial_states), restore Tune's experiment (or
    start one: none was made) and run it, then any later stage."""
    from ray import tune

    trial_states.settle_before_resume(sweep, statuses)
    if not tune.Tuner.can_restore(f"{sweep.where}/{staged_sweep.tune_name(stage)}"):
        # the driver died before it made the Tuner
        return _run_stages(sweep, spec, trials, stage, driver, launch,
                           trackers.for_resume([], list(log_to), sweep.local, spec.name))
    at_once = concurrency(spec, launch.max_concurrent)
    tuner = experiment.restored_tuner(sweep, spec, trials, stage, at_once, log_to,
                                      launch.verbose)
    print(f"{spec.name}: resuming, at most {at_once} trials at once", flush=True)
    callbacks = experiment.tracker_callbacks(tuner)
    for line in trackers.describe(callbacks, sweep.local):
        print(line, flush=True)
    if restart_errored:  # (Tune's own restart re-creates each trial from its stored record,
        # which can fail: the errored trials' outputs and Train runs are moved aside instead)
        _clear_errored(sweep, {n for n, s in statuses.items() if s == "ERROR"})
    errors = experiment.fit(tuner, sweep, driver, [t.name for t in trials])
    return _later_stages(sweep, spec, stage, errors, driver, launch, callbacks)


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
    else:
        if not trust.vouched(info):
            raise UserError(f"{folder / layout.DRIVER}: not signed by your smoothadv key, so "
                            "no process it names is ended; if a driver of yours runs this "
                            "sweep, stop it yourself (Ctrl-C or kill -INT its pid)")
        if driver_alive(folder):  # read_driver checked pid and start
            _interrupt((info["pid"], info["start"]), folder, grace_s)
        sweep.refresh(folder / layout.DRIVER)
    end_leftovers(sweep)
    print(f"{sweep.where}: stopped; continue with `smoothadv sweep resume {sweep.where}`")


def _interrupt(driver: processes.Process, folder: Path, grace_s: float) -> None:
    """Ctrl-C the sweep driver ``driver`` (pid, start) and give it ``grace_s`` to save Tune's
    state; end it if it has not ended by then."""
    if not processes.is_sweep_driver(driver):
        raise UserError(f"{folder / layout.DRIVER}: pid {driver[0]} is alive but runs no "
                        "smoothadv command; no process ended")
    os.kill(driver[0], signal.SIGINT)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and processes.alive(driver):
        time.sleep(0.5)
    processes.end([driver])
