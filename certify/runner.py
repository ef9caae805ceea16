"""CERTIFY / PREDICT over a dataset's images, resumable and shardable.

Image selection follows Cohen et al.'s scripts: every ``skip``-th index, stopping before index
``max`` (−1: no limit); ``start``/``stop`` cut the index range into shards. Each image's noise
comes from a generator seeded by (seed, idx), so shards and resumed runs reproduce exactly the
rows of one uninterrupted run. :func:`run_resumable` is the skeleton shared with the attack
(:mod:`certify.attack`): resume, settings record, torn-line repair, progress, model mode.
"""

from __future__ import annotations

import datetime
import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from smoothadv.certify.precision import evaluation_precision, precision_name, requested_precision
from smoothadv.certify.results_file import ResultsFile, recorded_settings
from smoothadv.certify.smooth import ABSTAIN, Smooth, batch_for
from smoothadv.common.errors import UserError
from smoothadv.common.provenance import provenance
from smoothadv.common.settings import Sampling
from smoothadv.trainers.compiled import certification_repays_compiling, compile_classifier
from smoothadv.trainers.device import resolve_device
from torch.utils.data import Dataset
from tqdm import tqdm

CERTIFY_COLUMNS = ("idx", "label", "predict", "radius", "correct", "time", "pA_lower")
PREDICT_COLUMNS = ("idx", "label", "predict", "correct", "time")


def select_indices(num_images: int, skip: int = 1, max_index: int = -1, start: int = 0,
                   stop: int | None = None) -> list[int]:
    """Indices i in [start, stop) with i % skip == 0 and i < max_index (when max_index ≥ 0)."""
    if skip < 1:
        raise UserError(f"skip: must be ≥ 1, got {skip}")
    if start < 0:
        raise UserError(f"start: must be ≥ 0, got {start}")
    end = num_images if stop is None else min(stop, num_images)
    if max_index >= 0:
        end = min(end, max_index)
    first = -(-start // skip) * skip
    return list(range(first, end, skip))


def image_seed(seed: int, idx: int) -> int:
    """A well-mixed 63-bit seed for image ``idx`` of a run seeded with ``seed``."""
    words = np.random.SeedSequence([seed, idx]).generate_state(2, dtype=np.uint32)
    return (int(words[0]) << 31) ^ int(words[1])


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def run_smoothing(
    model: torch.nn.Module,
    num_classes: int,
    dataset: Dataset,
    indices: Sequence[int],
    sampling: Sampling,
    out: str | Path,
    *,
    batch_size: int | None = None,
    identity: dict | None = None,
    progress: bool = True,
    device: str | torch.device | None = None,
    allow_tf32: bool = False,
    precision: str | None = None,
    compile: bool | None = None,
) -> ResultsFile:
    """CERTIFY (``sampling.n0`` set) or PREDICT each selected image not yet in ``out``;
    ``sampling.sequential``: sequential CERTIFY (:meth:`Smooth.certify_sequential`, the image's
    label given), its rows with the extra column ``samples``.

    ``identity`` (checkpoint hash, dataset, split) joins ``sampling`` and the precision
    (:mod:`certify.precision`: ``precision`` float32, tf32 or bf16; TF32 also with
    ``allow_tf32``) in the settings record, so a re-run against another model or other settings
    is refused rather than mixed in. Noise is drawn and ``model`` (any module, with or without
    parameters) is evaluated on ``device``, by default where the dataset's images are; its
    train/eval mode is restored afterwards.

    ``compile`` (None: when the run repays it, :func:`compile_smoothed`): the forward passes go
    through ``torch.compile`` when a probe pass compiles, else stay eager with one line saying
    why (:mod:`trainers.compiled`); the record then holds ``"compiled"`` (true or false), so a
    file recorded with ``"compiled": true`` is refused by a run asked to be eager and the
    reverse.
    """
    sampling.validate()
    requested_precision(precision, allow_tf32)
    device, generator, smooth, batch_size = smoother(model, num_classes, sampling.sigma,
                                                     dataset, indices, batch_size, device)
    per_image = sampling.n if sampling.n0 is None else sampling.n0 + sampling.n
    first = min(batch_size, sampling.n if sampling.n0 is None else sampling.n0)
    settings = {**(identity or {}), **sampling.record(), "compiled": compile_smoothed(
        compile, out, smooth, dataset, indices, first, per_image * len(indices), device,
        allow_tf32, precision)}
    evaluate = image_evaluator(smooth, generator, dataset, sampling, batch_size)
    return run_resumable(model, out, smoothing_columns(sampling), settings, list(indices),
                         evaluate, desc="predict" if sampling.n0 is None else "certify",
                         unit="img", progress=progress, device=device, allow_tf32=allow_tf32,
                         precision=precision)


def smoothing_columns(sampling: Sampling) -> tuple[str, ...]:
    """The columns of ``sampling``'s rows: Cohen et al.'s PREDICT or CERTIFY ones, the latter
    with ``samples`` when sequential."""
    if sampling.n0 is None:
        return PREDICT_COLUMNS
    return CERTIFY_COLUMNS + ("samples",) if sampling.sequential else CERTIFY_COLUMNS


def compile_smoothed(compile: bool | None, out: str | Path, smooth: Smooth, dataset: Dataset,
                     indices: Sequence[int], first: int, samples: int, device: torch.device,
                     allow_tf32: bool, precision: str | None) -> bool:
    """Whether ``smooth``'s forward passes now go through ``torch.compile``
    (trainers.compiled), probed on the first forward pass's batch (``first`` copies of the first
    selected image; none selected: no probe) in the run's precision.

    ``compile`` True or False: as asked. None (the default): as the run being resumed in
    ``out`` recorded, else when the run's ``samples`` forward passes repay the compilation
    (trainers.compiled.certification_repays_compiling), so a resumed run decides as it did."""
    x = dataset[indices[0]][0].to(device) if len(indices) else None
    if compile is None:
        recorded = recorded_settings(out) if Path(out).exists() else None
        compile = (bool(recorded.get("compiled")) if recorded is not None else x is not None
                   and certification_repays_compiling(smooth.base_classifier, x, samples,
                                                      device))
    if not compile:
        return False
    example = None if x is None else x.expand(first, *x.shape).contiguous()
    smooth.base_classifier, compiled = compile_classifier(
        smooth.base_classifier, example,
        context=lambda: evaluation_precision(device, allow_tf32, precision))
    return compiled


def image_evaluator(smooth: Smooth, generator: torch.Generator, dataset: Dataset,
                    sampling: Sampling, batch_size: int) -> Callable[[int], dict]:
    """The row of image ``idx``: PREDICT, sequential CERTIFY (the label given) or CERTIFY
    with ``sampling``, on noise seeded by (``sampling.seed``, idx)."""

    def evaluate(idx: int) -> dict:
        x, label = dataset[idx]
        generator.manual_seed(image_seed(sampling.seed, idx))
        t0 = time.perf_counter()
        if sampling.n0 is None:
            prediction = smooth.predict(x, sampling.n, sampling.alpha, batch_size)
            return {"idx": idx, **outcome(int(label), prediction, t0)}
        if sampling.sequential:
            prediction, radius, p_a_lower, samples = smooth.certify_sequential(
                x, sampling.n0, sampling.n, sampling.alpha, batch_size, label=int(label),
                target_radius=sampling.target_radius)
            return {"idx": idx, **outcome(int(label), prediction, t0), "radius": radius,
                    "pA_lower": p_a_lower, "samples": samples}
        prediction, radius, p_a_lower = smooth.certify_with_bound(
            x, sampling.n0, sampling.n, sampling.alpha, batch_size)
        return {"idx": idx, **outcome(int(label), prediction, t0), "radius": radius,
                "pA_lower": p_a_lower}

    return evaluate


def smoother(model: torch.nn.Module, num_classes: int, sigma: float, dataset: Dataset,
             indices: Sequence[int], batch_size: int | None,
             device: str | torch.device | None
             ) -> tuple[torch.device, torch.Generator, Smooth, int]:
    """The device (default: where the first selected image is), a noise generator on it, the
    smoothed classifier drawing from it, and the noisy samples per forward pass
    (``batch_size``, else certify.smooth.batch_for the device); a batch below 1 is refused."""
    if batch_size is not None and batch_size < 1:
        raise UserError(f"batch: must be ≥ 1, got {batch_size}")
    device = torch.device(device) if device is not None else input_device(dataset, indices)
    generator = torch.Generator(device=device)
    return device, generator, Smooth(model, num_classes, sigma, generator=generator,
                                     device=device), batch_for(batch_size, device)


def outcome(label: int, prediction: int, t0: float) -> dict:
    """A row's ``label``, ``predict``, ``correct`` (the label, not an abstention) and ``time``
    (since ``t0``, a ``time.perf_counter()``)."""
    elapsed = datetime.timedelta(seconds=time.perf_counter() - t0)
    return {"label": label, "predict": prediction,
            "correct": int(prediction == label and prediction != ABSTAIN), "time": str(elapsed)}


def run_resumable(
    model: torch.nn.Module,
    out: str | Path,
    columns: Sequence[str],
    settings: dict,
    keys: Sequence[Any],
    evaluate: Callable[[Any], dict],
    *,
    key_columns: dict | None = None,
    desc: str,
    unit: str,
    progress: bool,
    device: torch.device,
    allow_tf32: bool,
    precision: str | None = None,
) -> ResultsFile:
    """The skeleton of every resumable evaluation: open ``out`` or resume it (its settings
    record: ``settings`` plus the precision; a torn last line cut off, and said so), then
    ``evaluate`` each key of ``keys`` not yet done, in order, appending the row it returns,
    with a progress bar. ``model`` is in eval mode meanwhile and gets its train/eval mode
    back afterwards, also when anything raises."""
    record = {**settings, "precision": precision_name(device, allow_tf32, precision)}
    was_training = model.training
    model.eval()
    try:
        with evaluation_precision(device, allow_tf32, precision), ResultsFile(
                out, columns, record, key_columns=key_columns,
                provenance=provenance()) as results:
            if results.repaired_torn_line:
                tqdm.write(f"{out}: removed a torn last line left by an interrupted run")
            todo = [k for k in keys if k not in results.done]
            for key in tqdm(todo, desc=desc, unit=unit, disable=not progress,
                            postfix={"done before": len(keys) - len(todo)}):
                results.append(evaluate(key))
    finally:
        model.train(was_training)
    return results


def input_device(dataset: Dataset, indices: Sequence[int]) -> torch.device:
    """Where the first selected image lives (the CPU when none is selected)."""
    return dataset[indices[0]][0].device if len(indices) else torch.device("cpu")


@dataclass
class Evaluation:
    """A checkpoint's model (on ``device``) with the images it is evaluated on and the identity
    recorded beside the results (checkpoint hash, dataset, split; a released checkpoint's input
    layer)."""

    model: torch.nn.Module
    num_classes: int
    images: Dataset
    indices: list[int]
    identity: dict
    device: torch.device


def load_evaluation(
    checkpoint: str | Path,
    *,
    dataset: str | None = None,
    data_root: str | None = None,
    split: str = "test",
    skip: int = 1,
    max_index: int = -1,
    start: int = 0,
    stop: int | None = None,
    device: str | None = None,
    download: bool = False,
    input_layer: str | None = None,
    arch: str | None = None,
) -> Evaluation:
    """Load ``checkpoint`` (weights only) and the split of the dataset it was trained for
    (or ``dataset``), with the image indices selected by skip/max/start/stop.

    ``checkpoint`` is a smoothadv checkpoint or a released Cohen et al./SmoothAdv one
    (:mod:`trainers.released_checkpoints`), which needs ``input_layer``. ``arch``, when given,
    must be a smoothadv checkpoint's architecture. An import path ``module:name`` the checkpoint
    records as its arch or dataset is used only when ``arch`` or ``dataset`` names it (the
    user's own word: importing it runs its code); otherwise the file is refused.
    """
    from smoothadv.trainers.checkpoint import (
        is_smoothadv_checkpoint,
        model_from_checkpoint,
        read_weights_file,
    )
    from smoothadv.trainers.datasets import load_dataset
    from smoothadv.trainers.models import place
    from smoothadv.trainers.released_checkpoints import released_model

    device = resolve_device(device)
    payload = read_weights_file(checkpoint)
    if is_smoothadv_checkpoint(payload):
        if input_layer is not None:
            raise UserError(f"{checkpoint}: --input-layer is for released Cohen et al./SmoothAdv "
                            "checkpoints; a smoothadv checkpoint stores its own")
        # an import path the checkpoint records is refused unless named: as its arch, or as
        # the dataset to evaluate on (without --dataset, the checkpoint's, loaded below)
        model, ckpt = model_from_checkpoint(checkpoint, arch=arch, device=device, ckpt=payload,
                                            trust={dataset})
        trained_on, num_classes, extra = ckpt["dataset"], ckpt["num_classes"], {}
    else:
        if arch is not None:
            raise UserError(f"{checkpoint}: --arch is for smoothadv checkpoints; a released "
                            "Cohen et al./SmoothAdv checkpoint names its own")
        released = released_model(checkpoint, payload, input_layer)
        model = place(released.model, device)
        trained_on, num_classes = released.dataset, released.num_classes
        extra = {"input_layer": released.input_layer}
    name = dataset or trained_on
    images = load_dataset(name, split, data_root, augment=False, download=download)
    indices = select_indices(len(images), skip, max_index, start, stop)
    identity = {"checkpoint_sha256": file_sha256(checkpoint), "dataset": name, "split": split,
                **extra}
    return Evaluation(model, num_classes, images, indices, identity, device)


def smooth_checkpoint(
    checkpoint: str | Path,
    sampling: Sampling,
    out: str | Path,
    *,
    batch_size: int | None = None,
    progress: bool = True,
    allow_tf32: bool = False,
    precision: str | None = None,
    compile: bool | None = None,
    **selection,
) -> ResultsFile:
    """:func:`run_smoothing` on a checkpoint; ``selection`` goes to :func:`load_evaluation`."""
    sampling.validate()
    requested_precision(precision, allow_tf32)
    ev = load_evaluation(checkpoint, **selection)
    return run_smoothing(ev.model, ev.num_classes, ev.images, ev.indices, sampling, out,
                         batch_size=batch_size, identity=ev.identity, progress=progress,
                         device=ev.device, allow_tf32=allow_tf32, precision=precision,
                         compile=compile)
