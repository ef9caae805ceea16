"""Where a sweep keeps its files (the contract read by ``sweep status`` and ``analyze``)::

    SWEEP_DIR/sweep.yaml                 the spec as run (with --set applied)
    SWEEP_DIR/driver.json                pid and host of the sweep driver while it runs
    SWEEP_DIR/trials/<trial>/trial.json  {"name", "params"}: the trial's gridded values
    SWEEP_DIR/trials/<trial>/config.yaml, checkpoint.pt, metrics.jsonl   (trainers.train)
    SWEEP_DIR/trials/<trial>/state.json  {"state", "error", "trial_id", "started_at", "ended_at"}
    SWEEP_DIR/trials/<trial>/certify.tsv, attack.tsv (+ .meta.json), certify_plan.json
    SWEEP_DIR/trials/<trial>/nodes.jsonl where its rank-0 worker ran: a line per start
    SWEEP_DIR/tune/                      Ray Tune's experiment (restore point, TensorBoard logs)
    SWEEP_DIR/train/                     Ray Train's runs, one per Tune trial id
    SWEEP_DIR/errored/<trial>.N/         outputs of errored trials restarted from scratch
    SWEEP_DIR/mlflow.db, wandb/          --log-to's default MLflow store, W&B offline runs
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from trainers.atomic import atomic_write_bytes

SPEC = "sweep.yaml"
DRIVER = "driver.json"
TRIALS = "trials"
TUNE = "tune"
TRAIN = "train"
ERRORED = "errored"
TRIAL_INFO = "trial.json"
STATE = "state.json"
CERTIFY = "certify.tsv"
NODES = "nodes.jsonl"
CERTIFY_PLAN = "certify_plan.json"
ATTACK = "attack.tsv"


def trial_dir(sweep_dir: str | Path, name: str) -> Path:
    return Path(sweep_dir) / TRIALS / name


def write_json(path: str | Path, value: Any) -> None:
    data = (json.dumps(value, indent=1, sort_keys=True) + "\n").encode()
    atomic_write_bytes(Path(path), lambda f: f.write(data))


def read_json(path: str | Path) -> dict[str, Any] | None:
    """The JSON object in ``path``, or None when it is missing or unreadable."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None
