"""Where a sweep and a trial keep their files: every name is defined here, once, and used by
``sweep`` (which writes the folder), ``trainers`` and ``certify`` (which write a trial's files)
and ``sweep status`` and ``analysis`` (which read them)::

    SWEEP_DIR/sweep.yaml                 the spec as run (with --set applied)
    SWEEP_DIR/driver.json                pid and host of the sweep driver while it runs
    SWEEP_DIR/trials/<trial>/trial.json  {"name", "params", "provenance"}: gridded values,
                                         the versions that ran it
    SWEEP_DIR/trials/<trial>/config.yaml, checkpoint.pt (+ checkpoint.prev.pt), metrics.jsonl
                                         what ``smoothadv train`` writes (trainers.train)
    SWEEP_DIR/trials/<trial>/state.json  {"state", "error", "trial_id", "started_at", "ended_at"}
                                         (+ "why" when STOPPED early: sweep.early_stopping)
    SWEEP_DIR/trials/<trial>/certify.tsv, attack.tsv (+ .meta.json), certify_plan.json
    SWEEP_DIR/trials/<trial>/certify_stage1.tsv (+ .meta.json), certify_stage1_plan.json
                                         a staged sweep's cheap first certification
    SWEEP_DIR/stages.json                a staged sweep: {"stage": the stage running or done,
                                         "trials": {<trial>: {"stage": reached, "why": ...}}}
    SWEEP_DIR/schedule.json              sweep.early_stopping's record: {"settings", "trials":
                                         each trial's σ and proxy curve per rung, "stopped":
                                         {<trial>: {"why", "rung", "epoch", "at"}}}
    SWEEP_DIR/trials/<trial>/proxy_e<E>.tsv (+ .meta.json)  the proxy certified after epoch E
                                         (a rung of the schedule)
    SWEEP_DIR/trials/<trial>/certify.part<r>of<w>.tsv  rank r's share (a multi-worker trial)
    SWEEP_DIR/trials/<trial>/nodes.jsonl where its rank-0 worker ran: a line per start
    SWEEP_DIR/trials/<trial>/.lineage    the Tune trial id whose rows a node's local copy holds
    SWEEP_DIR/tune/                      Ray Tune's experiment (restore point, TensorBoard logs)
    SWEEP_DIR/tune-stage2/, tune-stage3/ a staged sweep's later stages, each its own experiment
    SWEEP_DIR/train/                     Ray Train's runs, one per Tune trial id
    SWEEP_DIR/errored/<trial>.N/         outputs of errored trials restarted from scratch
    SWEEP_DIR/mlflow.db, wandb/          --log-to's default MLflow store, W&B offline runs

The folder lives on shared file systems and in buckets, so its files are input: the records
are read through common.records (state.json, metrics.jsonl, driver.json, the plans),
common.stages_file (stages.json) and common.schedule_file (schedule.json), which tell a
file not written yet (absent) from one damaged (refused in one line naming it). Imports
neither torch nor Ray.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from smoothadv.common.atomic import atomic_write_bytes

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
CERTIFY_STAGE1 = "certify_stage1.tsv"
CERTIFY_STAGE1_PLAN = "certify_stage1_plan.json"
STAGES = "stages.json"
SCHEDULE = "schedule.json"
ATTACK = "attack.tsv"
META = ".meta.json"  # beside a results file: the settings it was made with (certify.results_file)
META_FORMAT_VERSION = 1  # its "format_version"; a record of another is refused
CONFIG = "config.yaml"
CHECKPOINT = "checkpoint.pt"
PREVIOUS = ".prev"  # checkpoint.prev.pt: the one the newest replaced (trainers.checkpoint)
METRICS = "metrics.jsonl"
LINEAGE = ".lineage"
MLFLOW_DB = "mlflow.db"


def trial_dir(sweep_dir: str | Path, name: str) -> Path:
    return Path(sweep_dir) / TRIALS / name


def proxy_name(epoch: int) -> str:
    """The file of the proxy certification after ``epoch`` epochs (sweep.early_stopping)."""
    return f"proxy_e{epoch}.tsv"


_SHARD = re.compile(r"\.part(\d+)of(\d+)\.")


def shard_name(name: str, rank: int, world: int) -> str:
    """The file rank ``rank`` of a ``world``-rank trial writes its share of ``name`` to
    (``certify.tsv`` → ``certify.part0of2.tsv``); with one rank, ``name`` itself."""
    if world == 1:
        return name
    stem, _, ext = name.partition(".")
    return f"{stem}.part{rank}of{world}.{ext}"


def shard_rank(name: str) -> int | None:
    """The rank whose share a file named by :func:`shard_name` holds (None: not a share)."""
    shard = _SHARD.search(name)
    return int(shard.group(1)) if shard else None


def meta_path(path: str | Path) -> Path:
    """The settings record beside the results file ``path`` (``certify.tsv.meta.json``)."""
    path = Path(path)
    return path.with_name(path.name + META)


# The format of the JSON records a sweep writes (state.json, trial.json, driver.json, plans,
# stages.json, schedule.json): write_json stamps it, common.records.read_object checks it.
RECORD_VERSION = 1


def write_json(path: str | Path, value: Any) -> None:
    """The record ``value`` written whole to ``path``, with its ``format_version`` (the
    record's own, else :data:`RECORD_VERSION`)."""
    value = {"format_version": RECORD_VERSION, **value}
    data = (json.dumps(value, indent=1, sort_keys=True) + "\n").encode()
    atomic_write_bytes(Path(path), lambda f: f.write(data))


def read_json(path: str | Path) -> dict[str, Any] | None:
    """The JSON object in ``path``, or None when it is missing or unreadable. Lenient: a
    damaged record reads as none, so read a sweep's records through common.records (and
    common.stages_file, common.schedule_file) instead, which refuse it naming the file."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None
