"""Where a trial starts: its folder's record (``config.yaml``) checked against the run asked
for, the epoch checkpoint it resumes from, or, in a fresh folder, its initial model.

A run folder holds one model: a re-run may change only :data:`RESUMABLE_CHANGES`. Nothing is
written before every check of a run passed (:func:`prepare_folder` reads, :func:`record_run`
writes), so a refused run leaves nothing that would refuse its corrected re-run.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml
from smoothadv.common.atomic import atomic_write_bytes
from smoothadv.common.errors import UserError
from smoothadv.common.layout import CHECKPOINT, CONFIG
from smoothadv.common.records import read_metrics
from smoothadv.common.yaml_input import read_yaml_file
from smoothadv.trainers.checkpoint import CheckpointMismatch, model_from_checkpoint, previous_path
from smoothadv.trainers.config import TrialConfig, parse_trial_config
from smoothadv.trainers.datasets import dataset_info
from smoothadv.trainers.models import build_model, reset_head
from torch import nn

# Keys a re-run into an existing folder may change (``block.key``: a key of a block): none
# changes the trained model or a certified row's meaning. certify.batch_size only groups the
# n noisy samples into forward passes (as the device, whose default it follows, does, and as
# Smooth.sample_counts halving it on running out of memory does): the same samples on the CPU,
# the same distribution on CUDA; the results file's settings record leaves it out too.
RESUMABLE_CHANGES = ("epochs", "device", "data_root", "loader_workers", "data_on_device",
                     "compile", "certify.batch_size")


def initial_model(config: TrialConfig, device: torch.device) -> nn.Sequential:
    """A fresh model, or (fine-tuning, SmoothAdv Table 2) the ``init_from`` model with its input
    layer kept as pre-trained and, with ``reinit_head``, a new final layer."""
    if config.init_from is None:
        return build_model(config.arch, config.dataset).to(device)
    # its arch is the trial's own; an import path as its dataset only if it is the trial's
    model, ckpt = model_from_checkpoint(
        config.init_from, arch=config.arch, device=device, trust=(config.dataset,),
        trust_hint="a pre-training dataset is trusted only as the trial's own dataset")
    info = dataset_info(config.dataset)
    if dataset_info(ckpt["dataset"]).input_shape[0] != info.input_shape[0]:
        raise UserError(f"init_from: {config.init_from} takes {ckpt['dataset']} images, whose "
                        f"channels differ from {config.dataset}'s")
    if config.reinit_head:
        reset_head(model, info.num_classes)
    elif ckpt["num_classes"] != info.num_classes:
        raise UserError(f"init_from: {config.init_from} has {ckpt['num_classes']} classes, "
                        f"{config.dataset} has {info.num_classes}; set reinit_head: true")
    return model  # its input layer too: the pre-trained layers see inputs as they learned them


def resume_point(ckpt_path: Path, config: TrialConfig, device: torch.device,
                 say: Callable[[str], None] | None = print) -> tuple[nn.Module, dict] | None:
    """The model and checkpoint to resume from: the newest readable of ``ckpt_path`` and the
    previous one kept beside it (saying so when falling back); None when neither exists.

    A checkpoint of another format version, architecture or dataset is never skipped over:
    that is a wrong folder, not a damaged file."""
    candidates = [p for p in (ckpt_path, previous_path(ckpt_path)) if p.exists()]
    failures = []
    for path in candidates:
        try:
            model, ckpt = model_from_checkpoint(path, arch=config.arch, dataset=config.dataset,
                                                device=device)
        except CheckpointMismatch:
            raise
        except UserError as e:
            failures.append(str(e))
            continue
        if failures and say is not None:
            say(f"{failures[0]}; resuming from the previous checkpoint {path} "
                f"(epoch {ckpt['epoch']})")
        return model, ckpt
    if failures:
        raise UserError(f"{failures[0]}; no readable checkpoint left to resume from"
                        + (f" ({failures[1]})" if len(failures) > 1 else ""))
    return None


def trim_metrics(path: Path, before_epoch: int) -> None:
    """Keep only metric lines of epochs that have a checkpoint (a crash may leave later ones)."""
    if not path.exists():
        return
    # read_metrics refuses a damaged complete line, naming it, and leaves out a torn last one;
    # json.dumps gives back each line as finish_epoch wrote it (json.dumps of the same dict)
    lines = [json.dumps(m) for m in read_metrics(path) if m["epoch"] < before_epoch]
    atomic_write_bytes(path, lambda f: f.write("".join(ln + "\n" for ln in lines).encode()))


def _without_resumable(record: dict[str, Any]) -> dict[str, Any]:
    """A config's ``to_dict()`` without the keys of :data:`RESUMABLE_CHANGES`."""
    kept = {k: dict(v) if isinstance(v, dict) else v for k, v in record.items()
            if k not in RESUMABLE_CHANGES}
    for name in RESUMABLE_CHANGES:
        block, _, key = name.partition(".")
        if key and isinstance(kept.get(block), dict):
            kept[block].pop(key, None)
    return kept


def _unrecorded(values: dict[str, Any], full: dict[str, Any], prefix: str = "") -> str | None:
    """The first key (``block.key`` inside a block) of ``full``, a config's ``to_dict()``,
    that ``values``, its record as read, lacks: :func:`record_run` writes every key."""
    for key, value in full.items():
        if key not in values:
            return f"{prefix}{key}"
        if isinstance(value, dict) and isinstance(values[key], dict):
            missing = _unrecorded(values[key], value, f"{prefix}{key}.")
            if missing is not None:
                return missing
    return None


def _recorded_config(path: Path, config: TrialConfig) -> TrialConfig:
    """The run's config as ``path`` records it; its arch and dataset are compared with
    ``config``'s first (before validating it imports an import path)."""
    values = read_yaml_file(path) or {}  # a refusal names the file
    if not isinstance(values, dict):
        raise UserError(f"{path}: cannot read the run's recorded config (not a mapping)")
    for key in ("arch", "dataset"):
        if key in values and values[key] != getattr(config, key):
            raise UserError(f"{path}: {key} is {values[key]!r} in this run, "
                            f"{getattr(config, key)!r} now; a run folder holds one model: "
                            "use another output folder")
    try:
        recorded = parse_trial_config(values)
    except UserError as e:
        raise UserError(f"{path}: cannot read the run's recorded config ({e})") from None
    missing = _unrecorded(values, recorded.to_dict())
    if missing is not None:
        raise UserError(f"{path}: cannot read the run's recorded config (it has no {missing})")
    return recorded


def check_same_run(config: TrialConfig, out: Path) -> None:
    """Refuse to train into ``out`` when its ``config.yaml`` (the run's record) differs from
    ``config`` in a key outside :data:`RESUMABLE_CHANGES`: resuming would mix two runs'
    settings in one folder. A record lacking a key is refused as unreadable."""
    path = out / CONFIG
    if not path.is_file():
        return
    old = _without_resumable(_recorded_config(path, config).to_dict())
    new = _without_resumable(config.to_dict())
    for key in new:
        if old[key] != new[key]:
            raise UserError(f"{path}: {key} is {old[key]!r} in this run, {new[key]!r} now; "
                            f"a run folder holds one model (only {', '.join(RESUMABLE_CHANGES)} "
                            f"may change on resume): use another output folder")


def prepare_folder(config: TrialConfig, out: Path, rank: int,
                   device: torch.device) -> tuple[nn.Module, dict | None]:
    """Refuse ``out`` when it holds another run; otherwise the model to train and the
    checkpoint it resumes from (None for a fresh run, whose model is seeded by
    ``config.seed``; ``init_from`` read and checked). Writes nothing: :func:`record_run`
    creates the folder once every check (the data's too) has passed."""
    check_same_run(config, out)
    torch.manual_seed(config.seed)
    resumed = resume_point(out / CHECKPOINT, config, device, say=print if rank == 0 else None)
    net, ckpt = resumed if resumed is not None else (initial_model(config, device), None)
    return net, ckpt


def record_run(config: TrialConfig, out: Path, rank: int) -> None:
    """Create the folder ``out`` and (rank 0) write the run's ``config.yaml``, the record
    :func:`check_same_run` compares a re-run with. Only after every check of the run passed:
    a refused run leaves nothing that would refuse its corrected re-run."""
    out.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        config_yaml = yaml.safe_dump(config.to_dict(), sort_keys=False).encode()
        atomic_write_bytes(out / CONFIG, lambda f: f.write(config_yaml))
