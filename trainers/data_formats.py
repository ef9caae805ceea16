"""Readers for the on-disk dataset formats (docs/reference-facts.md, "Data formats").

Every reader returns images as a uint8 array N×H×W×C and labels as an int64 array N, so the
datasets above them share one in-memory representation.
"""

from __future__ import annotations

import gzip
import pickle
import zlib
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from smoothadv.common.errors import UserError

CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_FILES = ("test_batch",)
IMAGENET32_TRAIN_FILES = tuple(f"train_data_batch_{i}" for i in range(1, 11))
IMAGENET32_TEST_FILES = ("val_data",)
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
MNIST_FILES = FASHION_MNIST_FILES  # Fashion-MNIST copies MNIST's format and file names
CIFAR100_FILES = {"train": ("train",), "test": ("test",)}  # in cifar-100-python/, beside meta
SVHN_FILES = {"train": ("train_32x32.mat",), "test": ("test_32x32.mat",)}  # cropped digits

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    """``_codecs.encode`` as Python 3 uses it to pickle bytes at protocol ≤ 2 (latin-1 only)."""
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise pickle.UnpicklingError(f"refused _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


def _allowed_globals() -> dict[tuple[str, str], Any]:
    """The globals a pickle of numpy arrays in plain containers refers to, under the module
    names of numpy 1.x (``numpy.core``) and 2.x (``numpy._core``), resolved to this numpy's
    functions (taken from its own reductions, not from the names in the file)."""
    array = np.zeros(1, np.uint8)
    table: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
    }
    for core in ("numpy.core", "numpy._core"):
        table[(f"{core}.multiarray", "_reconstruct")] = array.__reduce__()[0]
        table[(f"{core}.multiarray", "scalar")] = np.int64(0).__reduce__()[0]
        table[(f"{core}.numeric", "_frombuffer")] = array.__reduce_ex__(5)[0]
    return table


_ALLOWED_GLOBALS = _allowed_globals()


class SafeUnpickler(pickle.Unpickler):
    """An unpickler that builds only numpy arrays, dtypes, scalars and plain containers.

    Pickles run code through the globals they name (``os.system``, ``builtins.exec`` …);
    ``find_class`` resolves only the names in ``_ALLOWED_GLOBALS`` and refuses any other with a
    UserError naming ``path``, so a file the user did not write cannot execute code when read.
    """

    def __init__(self, file: BinaryIO, path: Path):
        super().__init__(file, encoding="latin1")  # Python 2 pickles (CIFAR-10) hold str arrays
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UserError(f"{self.path}: refused to unpickle global {module}.{name} "
                            "(only numpy arrays and plain containers are read)") from None


def read_pickle_dict(path: Path) -> dict:
    """A pickled dict read with SafeUnpickler; bytes keys (Python 2 pickles) become str."""
    try:
        with open(path, "rb") as f:
            obj = SafeUnpickler(f, path).load()
    except UserError:
        raise
    except Exception as e:  # a damaged pickle can raise almost any exception type
        raise UserError(f"{path}: cannot read pickle ({type(e).__name__}: {e})") from e
    if not isinstance(obj, dict):
        raise UserError(f"{path}: expected a pickled dict, got {type(obj).__name__}")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _rows_to_hwc(data: np.ndarray, side: int, path: Path) -> np.ndarray:
    """N×(3·side²) rows (all red, then green, then blue, each row-major) → N×side×side×3."""
    data = np.asarray(data, dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3 * side * side:
        raise UserError(f"{path}: 'data' has shape {data.shape}, expected N×{3 * side * side}")
    return data.reshape(-1, 3, side, side).transpose(0, 2, 3, 1).copy()


def read_pickle_batches(
    files: list[Path], num_classes: int, label_offset: int = 0, side: int = 32,
    label_key: str = "labels",
) -> tuple[np.ndarray, np.ndarray]:
    """Read CIFAR-10 / CIFAR-100 / ImageNet-32 pickle batches (CIFAR-100 keeps its 100-class
    labels under ``label_key="fine_labels"``); labels are shifted by ``-label_offset`` and must
    then lie in [0, num_classes)."""
    images, labels = [], []
    for path in files:
        batch = read_pickle_dict(path)
        if "data" not in batch or label_key not in batch:
            raise UserError(f"{path}: pickle batch lacks 'data' or {label_key!r}")
        batch_images = _rows_to_hwc(batch["data"], side, path)
        batch_labels = np.asarray(batch[label_key], dtype=np.int64).reshape(-1) - label_offset
        if len(batch_images) != len(batch_labels):
            raise UserError(
                f"{path}: {len(batch_images)} images but {len(batch_labels)} labels"
            )
        check_labels(batch_labels, num_classes, path, label_offset)
        images.append(batch_images)
        labels.append(batch_labels)
    return np.concatenate(images), np.concatenate(labels)


def check_labels(labels: np.ndarray, num_classes: int, path: Path, offset: int = 0) -> None:
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise UserError(
            f"{path}: labels must lie in {offset}..{num_classes - 1 + offset}, found "
            f"{labels.min() + offset}..{labels.max() + offset}"
        )


def read_idx_gz(path: Path) -> np.ndarray:
    """Read one gzipped idx file (the MNIST format): magic 0x0000TTDD, then D big-endian dims."""
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise UserError(f"{path}: cannot read gzipped idx file ({e})") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise UserError(f"{path}: not an idx file (bad magic number)")
    ndim = raw[3]
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    offset = 4 + 4 * ndim
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(raw) - offset != expected:
        raise UserError(f"{path}: idx payload is {len(raw) - offset} bytes, expected {expected}")
    array = np.frombuffer(raw, dtype=dtype, offset=offset).reshape(dims)
    return array.astype(dtype.newbyteorder("="))


def read_mnist_format(directory: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """The ``split`` of the gzipped idx files in ``directory``, in the MNIST layout that MNIST
    and Fashion-MNIST share (the same file names)."""
    image_file, label_file = FASHION_MNIST_FILES[split]
    images = read_idx_gz(directory / image_file)
    labels = read_idx_gz(directory / label_file).astype(np.int64)
    if images.ndim != 3 or len(images) != len(labels):
        raise UserError(f"{directory}: {image_file} and {label_file} do not match")
    check_labels(labels, 10, directory / label_file)
    return images[..., None].astype(np.uint8), labels


def read_svhn_mat(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One SVHN ``{split}_32x32.mat`` (MATLAB 5, read with scipy.io as torchvision does): ``X``
    is uint8 32×32×3×N (H, W, C, image), ``y`` is N×1 with labels 1..10, 10 standing for the
    digit 0; labels are returned as the digit, 0..9."""
    from scipy.io import loadmat

    try:
        mat = loadmat(path)
    except Exception as e:  # scipy raises ValueError, MatReadError, NotImplementedError (v7.3) …
        first = (str(e).strip().splitlines() or [""])[0]
        raise UserError(f"{path}: cannot read SVHN .mat file ({type(e).__name__}: {first})") from e
    if "X" not in mat or "y" not in mat:
        raise UserError(f"{path}: SVHN .mat file lacks 'X' or 'y'")
    x, y = np.asarray(mat["X"]), np.asarray(mat["y"]).reshape(-1).astype(np.int64)
    if x.ndim != 4 or x.shape[:3] != (32, 32, 3):
        raise UserError(f"{path}: 'X' has shape {x.shape}, expected 32×32×3×N")
    if x.shape[3] != len(y):
        raise UserError(f"{path}: {x.shape[3]} images but {len(y)} labels")
    check_labels(y - 1, 10, path, offset=1)
    images = np.ascontiguousarray(x.transpose(3, 0, 1, 2), dtype=np.uint8)
    return images, np.where(y == 10, 0, y)
