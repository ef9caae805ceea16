"""CERTIFY / PREDICT over a dataset's images, resumable and shardable.

Image selection follows Cohen et al.'s scripts: every ``skip``-th index, stopping before index
``max`` (−1: no limit); ``start``/``stop`` cut the index range into shards. Each image's noise
comes from a generator seeded by (seed, idx), so shards and resumed runs reproduce exactly the
rows of one uninterrupted run.
"""

from __future__ import annotations

import datetime
import hashlib
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from certify.results_file import ResultsFile
from certify.smooth import ABSTAIN, Smooth
from trainers.errors import UserError

CERTIFY_COLUMNS = ("idx", "label", "predict", "radius", "correct", "time", "pA_lower")
PREDICT_COLUMNS = ("idx", "label", "predict", "correct", "time")


@dataclass(frozen=True)
class Sampling:
    """Settings that determine a certification's numbers (recorded beside the output)."""

    sigma: float
    n: int
    alpha: float
    n0: int | None = None  # None for PREDICT
    seed: int = 0

    def validate(self) -> None:
        if not self.sigma > 0:
            raise UserError(f"sigma: must be > 0, got {self.sigma}")
        if self.n < 1:
            raise UserError(f"n: must be ≥ 1, got {self.n}")
        if self.n0 is not None and self.n0 < 1:
            raise UserError(f"n0: must be ≥ 1, got {self.n0}")
        if not 0 < self.alpha < 0.5:
            raise UserError(f"alpha: must lie in (0, 0.5), got {self.alpha}")


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
    batch_size: int = 400,
    identity: dict | None = None,
    progress: bool = True,
) -> ResultsFile:
    """CERTIFY (``sampling.n0`` set) or PREDICT each selected image not yet in ``out``.

    ``identity`` (checkpoint hash, dataset, split) joins ``sampling`` in the settings record, so
    a re-run against another model or other settings is refused rather than mixed in.
    """
    sampling.validate()
    if batch_size < 1:
        raise UserError(f"batch: must be ≥ 1, got {batch_size}")
    certifying = sampling.n0 is not None
    columns = CERTIFY_COLUMNS if certifying else PREDICT_COLUMNS
    settings = {**(identity or {}), **{k: v for k, v in asdict(sampling).items() if v is not None}}
    device = next(model.parameters()).device
    generator = torch.Generator(device=device)
    smooth = Smooth(model, num_classes, sampling.sigma, generator=generator)
    was_training = model.training
    model.eval()
    with ResultsFile(out, columns, settings) as results:
        if results.repaired_torn_line:
            tqdm.write(f"{out}: removed a torn last line left by an interrupted run")
        todo = [i for i in indices if i not in results.done]
        bar = tqdm(todo, desc="certify" if certifying else "predict", unit="img",
                   disable=not progress, postfix={"done before": len(indices) - len(todo)})
        for idx in bar:
            x, label = dataset[idx]
            generator.manual_seed(image_seed(sampling.seed, idx))
            t0 = time.perf_counter()
            if certifying:
                prediction, radius, p_a_lower = smooth.certify_with_bound(
                    x, sampling.n0, sampling.n, sampling.alpha, batch_size)
            else:
                prediction = smooth.predict(x, sampling.n, sampling.alpha, batch_size)
            elapsed = datetime.timedelta(seconds=time.perf_counter() - t0)
            row = {"idx": idx, "label": int(label), "predict": prediction,
                   "correct": int(prediction == int(label) and prediction != ABSTAIN),
                   "time": str(elapsed)}
            if certifying:
                row.update(radius=radius, pA_lower=p_a_lower)
            results.append(row)
    model.train(was_training)
    return results


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class Evaluation:
    """A checkpoint's model with the images it is evaluated on and the identity recorded
    beside the results (checkpoint hash, dataset, split)."""

    model: torch.nn.Module
    num_classes: int
    images: Dataset
    indices: list[int]
    identity: dict


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
) -> Evaluation:
    """Load ``checkpoint`` (weights only) and the split of the dataset it was trained for
    (or ``dataset``), with the image indices selected by skip/max/start/stop."""
    from trainers.checkpoint import model_from_checkpoint
    from trainers.datasets import load_dataset

    model, ckpt = model_from_checkpoint(checkpoint, device=device or default_device())
    name = dataset or ckpt["dataset"]
    images = load_dataset(name, split, data_root, augment=False, download=download)
    indices = select_indices(len(images), skip, max_index, start, stop)
    identity = {"checkpoint_sha256": file_sha256(checkpoint), "dataset": name, "split": split}
    return Evaluation(model, ckpt["num_classes"], images, indices, identity)


def smooth_checkpoint(
    checkpoint: str | Path,
    sampling: Sampling,
    out: str | Path,
    *,
    batch_size: int = 400,
    progress: bool = True,
    **selection,
) -> ResultsFile:
    """:func:`run_smoothing` on a checkpoint; ``selection`` goes to :func:`load_evaluation`."""
    sampling.validate()
    ev = load_evaluation(checkpoint, **selection)
    return run_smoothing(ev.model, ev.num_classes, ev.images, ev.indices, sampling, out,
                         batch_size=batch_size, identity=ev.identity, progress=progress)
