"""Self-training (Carmon et al. 2019, "Unlabeled Data Improves Adversarial Robustness"; SmoothAdv
Table 2): a teacher pseudo-labels unlabelled images, and training mixes them half-and-half with
the labelled set.

The pseudo-labelled set is a pickle in Carmon et al.'s format: ``data`` (N×H×W×C uint8) and
``extrapolated_targets`` (N labels). It is read with the safe unpickler of data_formats, so a
file from elsewhere cannot run code.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from smoothadv.common.atomic import atomic_write_bytes
from smoothadv.common.errors import UserError
from smoothadv.trainers.checkpoint import model_from_checkpoint
from smoothadv.trainers.data_formats import read_pickle_dict
from smoothadv.trainers.datasets import DATASETS, SPLITS, ArrayDataset, dataset_info, load_dataset
from smoothadv.trainers.device import resolve_device
from torch.utils.data import DataLoader, Dataset, Subset

DATA_KEY = "data"
TARGETS_KEY = "extrapolated_targets"


def _check_images(images: object, shape: tuple[int, int, int] | None, where: str) -> np.ndarray:
    """``images`` as uint8 N×H×W×C with N ≥ 1, and H×W×C = ``shape`` (C,H,W) when given."""
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4:
        got = (f"{images.dtype} array of shape {images.shape}" if isinstance(images, np.ndarray)
               else type(images).__name__)
        raise UserError(f"{where}: expected uint8 images N×H×W×C, got {got}")
    if shape is not None and images.shape[1:] != (shape[1], shape[2], shape[0]):
        c, h, w = shape
        raise UserError(f"{where}: images are {'×'.join(map(str, images.shape[1:]))} (H×W×C), "
                        f"expected {h}×{w}×{c}")
    if len(images) == 0:
        raise UserError(f"{where}: holds no images")
    return images


def load_extra_data(path: str | Path, dataset: str,
                    transform: Callable | None = None) -> ArrayDataset:
    """The pseudo-labelled set in ``path`` as an ArrayDataset for training on ``dataset``.

    ``data`` must be uint8 N×H×W×C with (C,H,W) the dataset's input shape and
    ``extrapolated_targets`` N integers in [0, num_classes). ``transform`` acts on uint8 C×H×W
    (ArrayDataset's convention); training passes the labelled set's, so both halves get the
    same augmentation.
    """
    path = Path(path)
    info = dataset_info(dataset)
    content = read_pickle_dict(path)
    for key in (DATA_KEY, TARGETS_KEY):
        if key not in content:
            raise UserError(f"{path}: '{key}' missing; a pseudo-labelled set holds "
                            f"'{DATA_KEY}' and '{TARGETS_KEY}'")
    images = _check_images(content[DATA_KEY], info.input_shape, f"{path}: '{DATA_KEY}'")
    try:
        targets = np.asarray(content[TARGETS_KEY])
    except ValueError:  # ragged nested sequences
        targets = np.asarray([], dtype=object)
    if (targets.ndim != 1 or len(targets) != len(images)
            or not np.issubdtype(targets.dtype, np.integer)):
        raise UserError(f"{path}: '{TARGETS_KEY}' must be {len(images)} integer labels, got "
                        f"{targets.dtype} of shape {targets.shape}")
    if targets.min() < 0 or targets.max() >= info.num_classes:
        raise UserError(f"{path}: '{TARGETS_KEY}' must lie in 0..{info.num_classes - 1} "
                        f"({dataset}), found {targets.min()}..{targets.max()}")
    return ArrayDataset(images, targets.astype(np.int64), transform)


def write_extra_data(path: str | Path, images: np.ndarray, targets: np.ndarray) -> None:
    """Write ``images`` (uint8 N×H×W×C) and ``targets`` in Carmon et al.'s format, atomically
    (pickle protocol 4)."""
    images = _check_images(images, None, str(path))
    targets = np.asarray(targets, dtype=np.int64)
    if targets.shape != (len(images),):
        raise ValueError(f"{len(images)} images but targets of shape {targets.shape}")
    payload = {DATA_KEY: np.ascontiguousarray(images), TARGETS_KEY: targets}
    atomic_write_bytes(path, lambda f: pickle.dump(payload, f, protocol=4))


def read_images(spec: str, *, data_root: str | None = None, limit: int | None = None
                ) -> np.ndarray:
    """Unlabelled images (uint8 N×H×W×C) named by ``spec``, the first ``limit`` of them.

    ``spec`` is ``DATASET:SPLIT`` (e.g. ``cifar10:train``; the dataset's labels are ignored),
    else a file: ``*.npy`` holds the array, anything else is a pickle in Carmon et al.'s
    format whose ``data`` is used.
    """
    name, sep, split = spec.partition(":")
    if sep and name in DATASETS:
        if split not in SPLITS:
            raise UserError(f"--images {spec}: unknown split {split!r}; expected one of "
                            f"{list(SPLITS)}")
        try:
            dataset = load_dataset(name, split, data_root, augment=False)
        except UserError as e:
            raise UserError(f"--images {spec}: {e}") from e
        if not isinstance(dataset, ArrayDataset):
            raise UserError(f"--images {spec}: {name} is not held in memory; pass its images "
                            "as a .npy file instead")
        images = dataset.images
    elif not Path(spec).is_file():
        raise UserError(f"--images {spec}: no such file, and not DATASET:SPLIT with DATASET "
                        f"one of {sorted(DATASETS)}")
    elif spec.endswith(".npy"):
        try:
            images = np.load(spec, allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise UserError(f"--images {spec}: cannot read .npy file ({e})") from e
    else:
        content = read_pickle_dict(Path(spec))
        if DATA_KEY not in content:
            raise UserError(f"--images {spec}: pickle lacks '{DATA_KEY}'")
        images = content[DATA_KEY]
    images = _check_images(images, None, f"--images {spec}")
    return images if limit is None else images[:limit]


@torch.no_grad()
def predict_labels(model: torch.nn.Module, images: np.ndarray, *, batch_size: int,
                   device: torch.device, progress: bool = False) -> np.ndarray:
    """argmax of the base classifier on the clean images (uint8 N×H×W×C → [0,1] N×C×H×W)."""
    from tqdm import tqdm

    model.eval()
    labels = []
    for start in tqdm(range(0, len(images), batch_size), desc="pseudo-label", unit="batch",
                      disable=not progress, leave=False):
        x = torch.from_numpy(images[start:start + batch_size]).to(device)
        labels.append(model(x.permute(0, 3, 1, 2).float().div_(255.0)).argmax(1).cpu())
    return torch.cat(labels).numpy().astype(np.int64)


def pseudo_label(teacher_ckpt: str | Path, images: str, out: str | Path, *,
                 limit: int | None = None, data_root: str | None = None,
                 batch_size: int = 256, device: str | None = None,
                 progress: bool = True, arch: str | None = None,
                 dataset: str | None = None) -> np.ndarray:
    """Label the images named by ``images`` (see read_images) with the teacher checkpoint and
    write them to ``out`` in Carmon et al.'s format; returns the labels.

    The label is the teacher's base-classifier argmax on the clean image, as Carmon et al.
    label with a standard (non-robust) classifier; it takes one forward pass per image, where
    the smoothed classifier's prediction would take many noisy samples.

    ``arch`` and ``dataset``, when given, must be the teacher's; an import path ``module:name``
    the teacher records as either is used only when named so (importing it runs its code).
    """
    if batch_size < 1:
        raise UserError(f"--batch: must be ≥ 1, got {batch_size}")
    if limit is not None and limit < 1:
        raise UserError(f"--limit: must be ≥ 1, got {limit}")
    torch_device = resolve_device(device)
    model, ckpt = model_from_checkpoint(teacher_ckpt, arch=arch, dataset=dataset,
                                        device=torch_device)
    array = read_images(images, data_root=data_root, limit=limit)
    _check_images(array, dataset_info(ckpt["dataset"]).input_shape,
                  f"--images {images} (teacher {teacher_ckpt} is a {ckpt['dataset']} model)")
    labels = predict_labels(model, array, batch_size=batch_size, device=torch_device,
                            progress=progress)
    write_extra_data(out, array, labels)
    return labels


def mixed_batches(loader: DataLoader, extra: Dataset, extra_weight: float, seed: int
                  ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Carmon et al.'s half-and-half batches, yielding ``(x, y, weight)``.

    Each labelled batch of ``loader`` is paired with as many pseudo-labelled examples, drawn
    uniformly with replacement from ``extra`` (as Carmon et al.'s sampler does) by a generator
    seeded with ``(seed, 1)``, so the epoch is one pass over the labelled set. The halves are
    interleaved (labelled, extra, labelled, …) so every chunk of train_batch holds both;
    ``weight`` is 1 for labelled and ``extra_weight`` for pseudo-labelled examples.
    """
    draws = np.random.default_rng([seed, 1]).integers(len(extra), size=len(loader.sampler))
    extra_loader = DataLoader(Subset(extra, draws.tolist()), batch_size=loader.batch_size)
    for (xl, yl), (xe, ye) in zip(loader, extra_loader, strict=True):
        x = torch.stack([xl, xe], 1).flatten(0, 1)
        y = torch.stack([yl, ye], 1).flatten(0, 1)
        weight = torch.tensor([1.0, extra_weight]).repeat(len(yl))
        yield x, y, weight
