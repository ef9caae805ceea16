"""Experiment trackers for sweeps (``--log-to mlflow``, ``--log-to wandb``): Ray Tune's own
logger callbacks, run by the sweep driver beside Tune's TensorBoard, CSV and JSON loggers.

- mlflow: one MLflow run per trial in the experiment named after the sweep
  (MLFLOW_EXPERIMENT_NAME overrides). The store is MLFLOW_TRACKING_URI when set (a tracking
  server, a database), else ``sqlite:///SWEEP_DIR/mlflow.db``: MLflow 3 refuses its old
  ``./mlruns`` file store unless MLFLOW_ALLOW_FILE_STORE=true, and names SQLite as the local
  store (it needs SQLAlchemy and Alembic, both in the ``mlflow`` extra). Browse it with
  ``mlflow ui --backend-store-uri sqlite:///SWEEP_DIR/mlflow.db`` (the UI is in the full
  ``mlflow`` package).
- wandb: one W&B run per trial in the project named after the sweep (WANDB_PROJECT overrides),
  grouped by sweep name. Offline unless WANDB_API_KEY is set (WANDB_MODE, when set, decides):
  runs are written to ``SWEEP_DIR/wandb/offline-run-*``, for ``wandb sync`` later. (Not into
  each trial's Tune folder, Ray's default: Tune copies that folder into the sweep before W&B
  has finished writing the run.)

Only the standard library at import time: the command line imports TRACKERS.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

from smoothadv.common import layout
from smoothadv.common.errors import UserError

TRACKERS = ("mlflow", "wandb")
MLFLOW_ARTIFACTS = "mlartifacts"  # artifact root of an experiment created in that store


def mlflow_uri(sweep_dir: Path) -> str:
    """MLFLOW_TRACKING_URI (MLflow's own convention), else a SQLite store in the sweep folder."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{sweep_dir / layout.MLFLOW_DB}"


def wandb_mode() -> str:
    """WANDB_MODE when set, else online with an API key (WANDB_API_KEY) and offline without."""
    return os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY")
                                            else "offline")


def _mlflow(sweep_dir: Path, name: str):
    from smoothadv.sweep.tracker_callbacks import SweepMLflowCallback

    local = "MLFLOW_TRACKING_URI" not in os.environ
    return SweepMLflowCallback(
        mlflow_uri(sweep_dir), experiment_name=os.environ.get("MLFLOW_EXPERIMENT_NAME") or name,
        artifact_location=str(sweep_dir / MLFLOW_ARTIFACTS) if local else None)


def _wandb(sweep_dir: Path, name: str):
    from smoothadv.sweep.tracker_callbacks import SweepWandbCallback

    return SweepWandbCallback(project=os.environ.get("WANDB_PROJECT") or name, group=name,
                              mode=wandb_mode(), dir=str(sweep_dir))  # runs in SWEEP_DIR/wandb


def callbacks(log_to: list[str], sweep_dir: Path, name: str) -> list[Any]:
    """One Tune logger callback per tracker named (repeats ignored); a tracker whose package
    is missing is a UserError naming the extra to install. Nothing is written until Tune
    sets the callbacks up."""
    check(log_to, sweep_dir)
    builders = {"mlflow": _mlflow, "wandb": _wandb}
    return [builders[kind](sweep_dir, name) for kind in dict.fromkeys(log_to)]


def check(log_to: list[str], sweep_dir: Path) -> None:
    """Refuse, in one line naming the extra to install, a tracker that is unknown or whose
    packages are missing (the default MLflow store, SQLite, needs SQLAlchemy and Alembic)."""
    for kind in log_to:
        if kind not in TRACKERS:
            raise UserError(f"--log-to {kind}: unknown tracker; one of {', '.join(TRACKERS)}")
        needs = ([kind] if kind == "wandb" else ["mlflow"] + (
            ["sqlalchemy", "alembic"] if mlflow_uri(sweep_dir).startswith("sqlite:") else []))
        missing = [m for m in needs if importlib.util.find_spec(m) is None]
        if missing:
            raise UserError(f"--log-to {kind}: {', '.join(missing)} not installed; "
                            f"pip install 'smoothadv[{kind}]'")


def kind_of(callback: Any) -> str | None:
    """The tracker a Tune callback logs to (None: not one of ours to manage)."""
    names = {base.__name__ for base in type(callback).__mro__}
    return ("mlflow" if "MLflowLoggerCallback" in names
            else "wandb" if "WandbLoggerCallback" in names else None)


def for_resume(restored: list[Any] | None, log_to: list[str], sweep_dir: Path,
               name: str) -> list[Any]:
    """The callbacks of a resumed sweep: Tune's restore point keeps the first run's callbacks,
    and has no argument to change them. Keep its other callbacks; log to every tracker the
    sweep logged to so far and to each of ``log_to``, rebuilt for this folder and this
    environment (MLFLOW_TRACKING_URI, WANDB_API_KEY, … as they are now)."""
    restored = list(restored or [])
    before = {kind_of(c): c for c in restored if kind_of(c)}
    rebuilt = callbacks([*before, *log_to], sweep_dir, name)
    for new in rebuilt:
        if kind_of(new) in before:
            _keep_settings(before[kind_of(new)], new)
    return [c for c in restored if kind_of(c) is None] + rebuilt


def _keep_settings(old: Any, new: Any) -> None:
    """What the first run's environment chose and this one's does not say again: its MLflow
    store when it was not the sweep folder's own, its experiment or W&B project name."""
    if kind_of(new) == "mlflow":
        if "MLFLOW_TRACKING_URI" not in os.environ and getattr(old, "artifact_location",
                                                                 None) is None:
            new.tracking_uri, new.artifact_location = old.tracking_uri, None
        if "MLFLOW_EXPERIMENT_NAME" not in os.environ:
            new.experiment_name = old.experiment_name
    elif "WANDB_PROJECT" not in os.environ:
        new.project = old.project


def describe(tracker_callbacks: list[Any], sweep_dir: Path) -> list[str]:
    """One line per tracker: where its runs go."""
    lines = []
    for c in tracker_callbacks:
        if kind_of(c) == "mlflow":
            lines.append(f"logging to MLflow: {c.tracking_uri}, experiment {c.experiment_name}")
        elif kind_of(c) == "wandb":
            mode = c.kwargs.get("mode")
            where = (f", runs in {sweep_dir}/wandb (upload them with `wandb sync`)"
                     if mode == "offline" else "")
            lines.append(f"logging to W&B ({mode}): project {c.project}{where}")
    return lines
