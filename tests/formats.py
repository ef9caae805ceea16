"""Writers for tiny files in the real on-disk dataset formats (docs/reference-facts.md).

Tests write these and read them back through ``trainers.load_dataset``, so the real loaders
(not an in-memory shortcut) are exercised. Plain functions, no fixtures.

Every pickle writer puts a marker pixel into the first image of every file: at
``MARK_ROW, MARK_COL`` (row ≠ col, so a transposed read is caught) red, green and blue are
``MARK_RGB`` (three distinct values, so a channel mix-up is caught).
"""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np

MARK_ROW, MARK_COL = 3, 7
MARK_RGB = (200, 100, 50)
SIDE = 32
PLANE = SIDE * SIDE  # values per colour plane in a 3072-long row

Written = dict[str, tuple[np.ndarray, list[int]]]  # split → (N×3072 rows, labels)

CIFAR10_TRAIN_FILES = [f"data_batch_{i}" for i in range(1, 6)]
IMAGENET32_TRAIN_FILES = [f"train_data_batch_{i}" for i in range(1, 11)]
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def flat_index(channel: int, row: int, col: int) -> int:
    """Position of pixel (row, col) of ``channel`` (0 red, 1 green, 2 blue) in a 3072-long row:
    1024 red values, then 1024 green, then 1024 blue, each plane row-major."""
    return channel * PLANE + row * SIDE + col


def _rows(rng: np.random.Generator, n: int) -> np.ndarray:
    rows = rng.integers(0, 256, size=(n, 3 * PLANE), dtype=np.uint8)
    if n:
        for ch, value in enumerate(MARK_RGB):
            rows[0, flat_index(ch, MARK_ROW, MARK_COL)] = value
    return rows


def _dump(path: Path, obj: object) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def write_cifar10(root: Path, per_batch: int, seed: int = 0) -> Written:
    """Write ``root/cifar-10-batches-py/{data_batch_1..5, test_batch}`` as the python version
    does (bytes keys ``b"data"``: N×3072 uint8, ``b"labels"``: list of ints 0–9).

    Returns ``{"train": (rows, labels), "test": (rows, labels)}``, train rows concatenated in
    batch order 1..5 (the order the loader reads them).
    """
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, tuple[list, list]] = {"train": ([], []), "test": ([], [])}
    for split, name in [("train", f) for f in CIFAR10_TRAIN_FILES] + [("test", "test_batch")]:
        rows = _rows(rng, per_batch)
        labels = [int(v) for v in rng.integers(0, 10, size=per_batch)]
        _dump(folder / name, {
            b"batch_label": name.encode(),
            b"labels": labels,
            b"data": rows,
            b"filenames": [f"img_{i}.png".encode() for i in range(per_batch)],
        })
        out[split][0].append(rows)
        out[split][1].extend(labels)
    return {k: (np.concatenate(r), lab) for k, (r, lab) in out.items()}


def write_imagenet32(root: Path, per_batch: int, seed: int = 0) -> Written:
    """Write ``root/{train_data_batch_1..10, val_data}`` (Imagenet32 pickle batches): str keys
    ``'data'`` (N×3072 uint8), ``'labels'`` counted 1..1000, and ``'mean'`` in training batches.

    The first training batch's labels start with 1 and 1000 (the extremes) when it holds at
    least two images. Returns ``{"train": (rows, labels), "test": (rows, labels)}`` with the
    labels as written (1-based).
    """
    rng = np.random.default_rng(seed)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    out: dict[str, tuple[list, list]] = {"train": ([], []), "test": ([], [])}
    for split, name in [("train", f) for f in IMAGENET32_TRAIN_FILES] + [("test", "val_data")]:
        rows = _rows(rng, per_batch)
        labels = [int(v) for v in rng.integers(1, 1001, size=per_batch)]
        if name == "train_data_batch_1" and per_batch >= 2:
            labels[:2] = [1, 1000]
        batch = {"data": rows, "labels": labels}
        if split == "train":
            batch["mean"] = rows.mean(axis=0)
        _dump(root / name, batch)
        out[split][0].append(rows)
        out[split][1].extend(labels)
    return {k: (np.concatenate(r), lab) for k, (r, lab) in out.items()}


def write_idx_gz(path: Path, array: np.ndarray) -> None:
    """Write a gzipped idx file: magic 0x0000_08_DD (uint8, DD dimensions; 0x00000801 for 1-d
    labels, 0x00000803 for 3-d images), then each dimension as a big-endian uint32, then data."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
    header += b"".join(struct.pack(">I", d) for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.tobytes())


def write_fashion_mnist(directory: Path, n_train: int, n_test: int, seed: int = 0) -> dict:
    """Write the four standard Fashion-MNIST file names into ``directory``.

    Returns ``{"train": (images N×28×28 uint8, labels N uint8), "test": (...)}``.
    """
    rng = np.random.default_rng(seed)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n).astype(np.uint8)
        image_file, label_file = FASHION_MNIST_FILES[split]
        write_idx_gz(directory / image_file, images)
        write_idx_gz(directory / label_file, labels)
        out[split] = (images, labels)
    return out


def write_imagefolder(
    root: Path,
    classes: list[str],
    per_class: int,
    size: tuple[int, int] = (20, 24),
    seed: int = 0,
    solid: bool = False,
) -> dict[str, list[tuple[Path, int, np.ndarray]]]:
    """Write RGB PNGs under ``root/train/<class>/`` and ``root/val/<class>/``.

    ``size`` is (height, width). With ``solid`` every image is one distinct colour. Returns
    ``{"train": [(path, class index in sorted order, H×W×3 uint8)], "val": [...]}``.
    """
    from PIL import Image

    rng = np.random.default_rng(seed)
    h, w = size
    index = {c: i for i, c in enumerate(sorted(classes))}
    out: dict[str, list] = {"train": [], "val": []}
    for split in ("train", "val"):
        for cls in classes:
            folder = Path(root) / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(per_class):
                if solid:
                    colour = rng.integers(0, 256, size=3, dtype=np.uint8)
                    pixels = np.broadcast_to(colour, (h, w, 3)).copy()
                else:
                    pixels = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
                path = folder / f"{cls}_{k}.png"
                Image.fromarray(pixels).save(path)
                out[split].append((path, index[cls], pixels))
    return out


def write_mnist(directory: Path, n_train: int, n_test: int, seed: int = 0) -> dict:
    """MNIST's four idx .gz files: the format and the names Fashion-MNIST copied."""
    return write_fashion_mnist(directory, n_train, n_test, seed)


def write_cifar100(root: Path, n_train: int, n_test: int, seed: int = 0) -> Written:
    """Write ``root/cifar-100-python/{train, test, meta}`` as the python version does: bytes
    keys, ``b"data"`` N×3072 uint8, ``b"fine_labels"`` (0–99) and ``b"coarse_labels"`` (0–19)
    lists, ``b"filenames"``; ``meta`` names the classes. The training labels start with 0 and
    99 (the extremes) when there are at least two images. Returns the rows and fine labels."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        rows = _rows(rng, n)
        fine = [int(v) for v in rng.integers(0, 100, size=n)]
        if split == "train" and n >= 2:
            fine[:2] = [0, 99]
        _dump(folder / split, {
            b"filenames": [f"img_{i}.png".encode() for i in range(n)],
            b"batch_label": f"{split}ing batch 1 of 1".encode(),
            b"fine_labels": fine,
            b"coarse_labels": [v // 5 for v in fine],
            b"data": rows,
        })
        out[split] = (rows, fine)
    _dump(folder / "meta", {b"fine_label_names": [f"fine{i}".encode() for i in range(100)],
                            b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)]})
    return out


def write_svhn(root: Path, n_train: int, n_test: int, seed: int = 0) -> dict:
    """Write ``root/{train,test}_32x32.mat`` (SVHN format 2, MATLAB 5 files as distributed):
    ``X`` uint8 32×32×3×N (height, width, channel, image), ``y`` uint8 N×1 labels 1..10 where
    10 is the digit 0. The first image carries the marker pixel (``X[MARK_ROW, MARK_COL, :, 0]
    = MARK_RGB``); the first labels are 10 and 9 when there are at least two images.

    Returns ``{"train": (images N×32×32×3 uint8, digits N), "test": (...)}``, digits 0..9."""
    from scipy.io import savemat

    rng = np.random.default_rng(seed)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images = rng.integers(0, 256, size=(n, SIDE, SIDE, 3), dtype=np.uint8)
        y = rng.integers(1, 11, size=n).astype(np.uint8)
        if n:
            images[0, MARK_ROW, MARK_COL] = MARK_RGB
        if n >= 2:
            y[:2] = [10, 9]
        savemat(root / f"{split}_32x32.mat",
                {"X": np.ascontiguousarray(images.transpose(1, 2, 3, 0)), "y": y[:, None]})
        out[split] = (images, np.where(y == 10, 0, y).astype(np.int64))
    return out
