"""A sweep's Tune experiment: its trainable, a new or restored Tuner, and one ``fit()``.

Ray facts relied on (Ray 2.60; docs/reference-facts.md): ``Tuner.restore(resume_errored=True)``
keeps trial ids; the trial drivers ask Ray for no CPU (:data:`DRIVER_RESOURCES`), so the
workers' resources are the real budget. Tune's console output at verbosity 0 is not silent
(its new output engine prints tables, it logs each failed trial's traceback): see
:func:`tune_output`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from smoothadv.common import layout
from smoothadv.common.errors import UserError, first_line
from smoothadv.sweep import staged_sweep, trackers, trial_states, trust
from smoothadv.sweep.grid import Trial
from smoothadv.sweep.log_filters import filtered
from smoothadv.sweep.param_space import param_space, trial_name
from smoothadv.sweep.signals import Terminated, stop_on_sigterm
from smoothadv.sweep.spec import SweepSpec
from smoothadv.sweep.storage import SweepFolder

# What a trial's driver (Tune's function, which only waits on its Train run) asks Ray for: no
# CPU, only its memory. A CPU sliver would leave fragments: once a node dies, the restarted
# trials' drivers pile onto the survivors, and their slivers keep a whole-CPU worker group
# from fitting where its CPUs are free (2 drivers on a 1-CPU node: 0.98 CPU left for a
# 0.99-CPU worker). Memory is a logical Ray resource too; 256 MiB covers a driver's ~130 MiB.
DRIVER_RESOURCES = {"CPU": 0, "memory": 256 * 1024**2}
# Tune's environment switches for a quiet console (tune_output): its legacy output engine,
# and no traceback logged per failed trial
QUIET_TUNE = {"RAY_AIR_NEW_OUTPUT": "0", "TUNE_PRINT_ALL_TRIAL_ERRORS": "0"}
# Tune's loggers whose INFO lines a quiet console leaves out (a filter holds for its own
# logger only): where it wrote its state, which state file it restores from
TUNE_LOGS = ("ray.tune.tune", "ray.tune.execution.tune_controller")


def trainable(sweep: SweepFolder, spec: SweepSpec):
    """Tune's trainable: sweep.trial_driver with the sweep's folder and validated spec."""
    from ray import tune
    from smoothadv.sweep.trial_driver import trial_driver

    return tune.with_resources(tune.with_parameters(trial_driver, sweep_dir=sweep.where,
                                                    spec=spec), DRIVER_RESOURCES)


def console(sweep: SweepFolder, verbose: int) -> list:
    """The callbacks that print a sweep's progress: Tune's own at ``verbose`` 1 or 2 (Tune's
    verbosity, ``--verbose``) and none of ours; at 0, Tune silent and our compact view
    (sweep.console)."""
    from smoothadv.sweep.console import ConsoleReporter

    return [] if verbose else [ConsoleReporter(str(sweep.local))]


def without_ours(callbacks: list) -> list:
    """``callbacks`` less the driver's own (the signer and the console reporter), which a
    restored Tuner gets anew."""
    from smoothadv.sweep.console import ConsoleReporter
    from smoothadv.sweep.signing_callback import TuneStateSigner

    return [c for c in callbacks or () if not isinstance(c, (TuneStateSigner, ConsoleReporter))]


def new_tuner(sweep: SweepFolder, spec: SweepSpec, trials: list[Trial], stage: int,
              at_once: int, verbose: int, callbacks: list):
    """A new Tune experiment running ``trials`` (in a staged sweep: their ``stage``), at most
    ``at_once`` at a time, logging to the trackers' ``callbacks``, reporting on the console
    as ``verbose`` says (:func:`console`); with a ``schedule`` block, trials that train
    (stage ≤ 1) are stopped early by sweep.early_stopping."""
    from ray import tune
    from smoothadv.sweep.signing_callback import TuneStateSigner

    scheduler = None
    if spec.schedule is not None and stage <= 1:
        from smoothadv.sweep.early_stopping import EnvelopeScheduler

        scheduler = EnvelopeScheduler(sweep.where, spec.schedule.record())
    name = staged_sweep.tune_name(stage)
    tuner = tune.Tuner(
        trainable(sweep, spec),
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
            # the --log-to trackers (sweep.trackers), the console, the restore point's signer
            callbacks=[*callbacks, *console(sweep, verbose), TuneStateSigner(sweep, name)],
        ),
    )
    trust.sign_tune_state(sweep, name)  # the tuner.pkl it just wrote
    return tuner


def restored_tuner(sweep: SweepFolder, spec: SweepSpec, trials: list[Trial], stage: int,
                   at_once: int, log_to: list[str], verbose: int = 0):
    """The stage's Tune experiment restored (errored trials resume, keeping their Tune trial
    ids), set for this cluster (``at_once``) and this folder, logging to the trackers it
    logged to and those of ``log_to``, reporting as ``verbose`` says now (:func:`console`;
    the first run's console reporter and signer are replaced). The param space is given
    again: Tune keeps only its keys, and a driver killed before Tune saved any experiment
    state leaves a Tuner that would restart with an empty one."""
    from ray import tune
    from smoothadv.sweep.ray_private import restored_configs
    from smoothadv.sweep.signing_callback import TuneStateSigner

    name = staged_sweep.tune_name(stage)
    try:
        tuner = tune.Tuner.restore(f"{sweep.where}/{name}", trainable(sweep, spec),
                                   resume_errored=True, param_space=param_space(trials, stage))
    except ModuleNotFoundError as e:  # its restore point holds the callback of a tracker
        kind = (e.name or "").split(".")[0]
        if kind not in trackers.TRACKERS:
            raise
        raise UserError(f"{sweep.where}: this sweep logs to {kind}, which is not installed; "
                        f"pip install 'smoothadv[{kind}]'") from None
    tune_config, run_config = restored_configs(tuner)
    tune_config.max_concurrent_trials = at_once
    # The first run's scheduler, pickled without its state (sweep.early_stopping reads
    # schedule.json again): point it at the sweep folder as named now (it may have moved).
    if hasattr(tune_config.scheduler, "sweep_dir"):
        tune_config.scheduler.sweep_dir = sweep.where
    run_config.callbacks = trackers.for_resume(run_config.callbacks, list(log_to), sweep.local,
                                               spec.name)
    run_config.verbose = verbose
    run_config.callbacks = [*without_ours(run_config.callbacks), *console(sweep, verbose),
                            TuneStateSigner(sweep, name)]
    return tuner


def tracker_callbacks(tuner) -> list:
    """The trackers' callbacks of a restored Tuner (its signer and console left out)."""
    from smoothadv.sweep.ray_private import restored_configs

    return without_ours(restored_configs(tuner)[1].callbacks)


def _tune_quiet(record: logging.LogRecord) -> bool:
    """Tune's log lines shown at verbosity 0 (:data:`TUNE_LOGS`): its warnings and errors, not
    its INFO lines nor its list of the trials that failed (the console's lines and the sweep's
    summary say it)."""
    return record.levelno > logging.INFO and not str(record.msg).startswith(
        "Trials did not complete")


@contextlib.contextmanager
def tune_output(verbose: int) -> Iterator[None]:
    """Within: Tune prints nothing at ``verbose`` 0 but its warnings (sweep.console prints
    instead), through the public switches of :data:`QUIET_TUNE`, read when ``fit()`` starts:
    Ray 2.60's new output engine prints its configuration table when the experiment starts and
    a trial-status table when it ends at any verbosity, its legacy engine nothing at 0; and
    Tune logs each failed trial's whole traceback (Tune's error.txt in the trial's folder
    keeps it, the console shows its root cause)."""
    if verbose:
        yield
        return
    before = {key: os.environ.get(key) for key in QUIET_TUNE}
    os.environ.update(QUIET_TUNE)
    try:
        with filtered(TUNE_LOGS, _tune_quiet):
            yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def fit(tuner, sweep: SweepFolder, driver: dict[str, Any], names: list[str]) -> int:
    """Run the Tuner (its trials: ``names``); returns the number of errored trials. Stopped
    early (Ctrl-C, `sweep stop`, SIGTERM), Tune saves its state and returns: that raises
    KeyboardInterrupt (on SIGTERM :class:`~sweep.signals.Terminated`) after the summary.
    ``driver`` is the driver's record (sweep.driver_record), rewritten with the Ray processes
    it started."""
    from smoothadv.sweep.ray_private import restored_configs

    planned = len(names)
    sweep.write_json(sweep.local / layout.DRIVER,
                     trust.signed({**driver, "heartbeat": time.time()}))
    terminated = stop_on_sigterm()
    try:
        with tune_output(restored_configs(tuner)[1].verbose):
            results = tuner.fit()
    except Exception:
        traceback.print_exc()
        raise
    if driver["ray_processes"]:  # our own local cluster: end its actors before reading states
        import ray

        ray.shutdown()
    errors = results.num_errors
    finished = trial_states.settle_after_fit(
        sweep, {Path(r.path).name: first_line(r.error) for r in results if r.error is not None},
        names)
    sweep_dir = sweep.where
    if finished + errors < planned:
        print(f"{sweep_dir}: interrupted with {finished} of {planned} trials finished, {errors} "
              f"errored; continue with `smoothadv sweep resume {sweep_dir}`")
        raise Terminated if terminated[0] else KeyboardInterrupt
    from smoothadv.common.schedule_file import stopped_trials

    stopped = len(set(stopped_trials(sweep.local)) & set(names))
    print(f"{sweep_dir}: {planned} trials, {errors} errored"
          + (f", {stopped} stopped early by the schedule" if stopped else "")
          + (f"; see `smoothadv sweep status {sweep_dir}`" if errors else ""))
    return errors
