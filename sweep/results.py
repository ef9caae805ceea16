"""A sweep's results as Ray users read them: the Tune ``ResultGrid`` of its experiment.

:func:`result_grid` is what ``Tuner.restore(path, trainable).get_results()`` returns for the
sweep's Tune experiment (``ResultGrid(ExperimentAnalysis(path))``, the same object), without the
trainable, without Ray running and without loading anything the user's key did not sign:

- Tune's restore point (``tune/``: ``experiment_state-*.json``, ``tuner.pkl``, …) is checked
  first (sweep.trust.verify_tune_state): Tune unpickles it, and a file whoever can write the
  sweep folder put there could run any code. ``tuner.pkl`` itself is never read (it holds the
  run's callbacks: a tracker's, say, whose package need not be installed here).
- An errored trial's pickled exception (``error.pkl`` in its Tune folder, unsigned) is not
  loaded either: its ``error`` is the text of Tune's ``error.txt``, as Tune gives it when there
  is no pickle.

Nothing runs, nothing in the folder changes; a sweep in a bucket is read from the bucket.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from smoothadv.common.errors import UserError
from smoothadv.common.stages_file import LAST
from smoothadv.sweep import staged_sweep, trust
from smoothadv.sweep.status import read_sweep_spec
from smoothadv.sweep.storage import SweepFolder, read_sweep
from smoothadv.sweep.trial_states import EXPERIMENT_STATE

if TYPE_CHECKING:
    from ray.tune import ResultGrid


def result_grid(sweep_dir: str | Path, stage: int | None = None) -> ResultGrid:
    """The Tune ``ResultGrid`` of the sweep at ``sweep_dir`` (the folder or bucket URI that
    ``smoothadv sweep run`` printed): one ``Result`` per trial Tune has created (every trial
    once the sweep has run through), with its last reported metrics.

    ``stage`` picks the Tune experiment of a staged sweep (each stage is one: 1 trains every
    trial and screens it, 2 certifies the survivors at full n, 3 re-certifies the envelope's
    winners); by default the last stage that saved any state. An unstaged sweep has one
    experiment (``stage`` None, 0 or 1).

    Works with or without Ray running (``ray.init`` is not needed), also while the sweep runs;
    a state Tune saved a moment ago and the driver has not signed yet is refused like a forged
    one (call again). Refused in one line (``UserError``): a folder that is no sweep, a stage it
    has no results for, a restore point not signed by your smoothadv key (see ``smoothadv
    sweep trust``).

    Example::

        from smoothadv.sweep import result_grid

        grid = result_grid("sweeps/cifar10_paper")
        table = grid.get_dataframe()  # one row per trial that reported
        table[["config/trial/name", "config/trial/sigma", "cert_acc_0.25", "cert_acc_0.5",
               "acr"]].sort_values("acr")
        grid.num_errors, [r.path for r in grid if r.error]

    Columns: ``config/trial/name`` (the trial's name, as ``sweep status`` shows it), one
    ``config/trial/<key>`` per gridded key (``config/trial/sigma``, ``config/trial/method``, …;
    empty where a trial's part of the grid has no such key), the trial's whole config under
    ``config/trial/config/…``, and the metrics of its last report: after certification
    ``cert_acc_0``, ``cert_acc_0.25``, ``cert_acc_0.5``, ``cert_acc_0.75``, ``cert_acc_1``
    (certified accuracy at those radii), ``acr``, ``abstain``, ``certified_images``, and with an
    ``attack_eval`` block ``attack_acc_<ε>`` (empirical accuracy under attack); a trial still
    training (or stopped early by the ``schedule``) shows its last epoch's training metrics
    instead. Per-epoch metrics: ``grid[i].metrics_dataframe``.
    """
    sweep = read_sweep(sweep_dir)
    staged = read_sweep_spec(sweep.local).stages is not None
    name = _experiment(sweep, staged, stage)
    trust.verify_tune_state(sweep, name)  # before Tune unpickles any of it
    from ray.tune import ExperimentAnalysis, ResultGrid

    analysis = ExperimentAnalysis(f"{sweep.where}/{name}")
    for trial in analysis.trials:
        trial.run_metadata.pickled_error_filename = None  # error.pkl: unsigned, never loaded
    return ResultGrid(analysis)


def _experiment(sweep: SweepFolder, staged: bool, stage: int | None) -> str:
    """The folder of the Tune experiment to read: ``stage``'s, by default the last one with a
    saved state; one UserError line when there is none."""
    if stage is not None and (isinstance(stage, bool) or stage not in range(LAST + 1)
                              or (stage > 1 and not staged)):
        what = f"stage 1 to {LAST}" if staged else "stage None, 0 or 1 (it is not staged)"
        raise UserError(f"{sweep.where}: no stage {stage!r} in this sweep; give {what}")
    if stage is not None:
        names = [staged_sweep.tune_name(stage)]
    else:
        names = [staged_sweep.tune_name(s) for s in range(LAST if staged else 1, 0, -1)]
    for name in names:
        if _has_state(sweep, name):
            return name
    raise UserError(f"{sweep.where}/{names[-1]}: no Tune results yet (Tune saved no "
                    "experiment state there); see `smoothadv sweep status "
                    f"{sweep.where}`")


def _has_state(sweep: SweepFolder, name: str) -> bool:
    """Whether Tune saved an experiment state in the sweep's folder ``name``."""
    if sweep.remote is not None:
        files = [rel for rel, _ in sweep.remote.files(name) if "/" not in rel]
    else:
        folder = sweep.local / name
        files = [p.name for p in folder.iterdir()] if folder.is_dir() else []
    return any(f.startswith(EXPERIMENT_STATE) and f.endswith(".json") for f in files)
