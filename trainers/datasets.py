"""Datasets by name: shape, classes and normalization, and loaders that yield [0,1] pixels.

Every dataset returns ``(image, label)`` with ``image`` a float32 C×H×W tensor in [0,1]:
noise is added in pixel space and the model normalizes in its first layer
(Cohen et al. 2019; docs/reference-facts.md, "Where the noise goes").
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from smoothadv.common.errors import UserError
from smoothadv.trainers import data_formats as fmt
from smoothadv.trainers.registry import (  # noqa: F401 (DATASETS, DatasetInfo re-exported)
    DATASETS,
    DatasetInfo,
    dataset_info,
    is_import_path,
    resolve_import_path,
)
from torch.utils.data import Dataset

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
SPLITS = ("train", "test")
_CIFAR10_FILES = {"train": fmt.CIFAR10_TRAIN_FILES, "test": fmt.CIFAR10_TEST_FILES}
_IMAGENET32_FILES = {"train": fmt.IMAGENET32_TRAIN_FILES, "test": fmt.IMAGENET32_TEST_FILES}


class ArrayDataset(Dataset):
    """Images held in memory as uint8 N×H×W×C; ``transform`` acts on the uint8 C×H×W tensor."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Callable | None = None):
        if len(images) != len(labels):
            raise ValueError("images and labels differ in length")
        self.images = images
        self.labels = labels
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = torch.from_numpy(self.images[i]).permute(2, 0, 1)
        if self.transform is not None:
            x = self.transform(x)
        return x.float().div_(255.0), int(self.labels[i])


def _candidate_dirs(
    data_root: str | Path | None, env_vars: Sequence[str], extra: Sequence[Path] = ()
) -> list[Path]:
    dirs = [Path(data_root)] if data_root else []
    dirs += [Path(os.environ[v]) for v in env_vars if os.environ.get(v)]
    dirs += [Path("data"), *extra]
    return list(dict.fromkeys(dirs))


def _find_dir(
    candidates: Sequence[Path], subdirs: Sequence[str], required: Sequence[str]
) -> Path | None:
    """First ``candidate/subdir`` holding every file in ``required``."""
    for base in candidates:
        for sub in subdirs:
            d = base / sub if sub else base
            if all((d / f).is_file() for f in required):
                return d
    return None


def _not_found(name: str, tried: Sequence[Path], files: Sequence[str], how: str) -> UserError:
    listed = ", ".join(str(p) for p in tried) or "(no directory given)"
    return UserError(
        f"dataset {name!r} not found: looked for {', '.join(files)} in {listed}; {how}"
    )


def _small_image_transform(side: int, train: bool, flip: bool = True) -> Callable | None:
    """CIFAR-style augmentation (random crop with 4-pixel padding, horizontal flip unless
    ``flip`` is false: a mirrored digit is no digit) on uint8."""
    if not train:
        return None
    from torchvision.transforms import v2  # torchvision's import costs ~1.5 s: only when used

    if not flip:
        return v2.RandomCrop(side, padding=4)
    return v2.Compose([v2.RandomCrop(side, padding=4), v2.RandomHorizontalFlip()])


def _locate(
    name: str,
    candidates: Sequence[Path],
    subdirs: Sequence[str],
    files: Sequence[str],
    how: str,
    fetch: Callable[[Path], object] | None = None,
) -> Path:
    """The folder holding ``files``; with ``fetch`` (a torchvision download into a root folder),
    try it in the first candidate before giving up with an error naming every folder tried."""
    found = _find_dir(candidates, subdirs, files)
    if found is None and fetch is not None:
        try:
            fetch(candidates[0])
        except Exception as e:  # network errors come in many types
            raise _not_found(name, candidates, files, f"download failed ({e})") from e
        found = _find_dir(candidates[:1], subdirs, files)
    if found is None:
        raise _not_found(name, candidates, files, how)
    return found


def _cifar10_dir(split: str, data_root, download: bool) -> Path:
    def fetch(root: Path) -> None:
        from torchvision.datasets import CIFAR10

        CIFAR10(str(root), train=split == "train", download=True)

    return _locate(
        "cifar10", _candidate_dirs(data_root, ["SMOOTHADV_DATA"]), ("cifar-10-batches-py", ""),
        _CIFAR10_FILES[split],
        "get the python version from https://www.cs.toronto.edu/~kriz/cifar.html "
        "(or pass --download) and give its folder with --data-root "
        "(config key data_root)",
        fetch if download else None,
    )


def _cifar10(split: str, data_root, download: bool, augment: bool) -> Dataset:
    found = _cifar10_dir(split, data_root, download)
    images, labels = fmt.read_pickle_batches([found / f for f in _CIFAR10_FILES[split]], 10)
    return ArrayDataset(images, labels, _small_image_transform(32, split == "train" and augment))


def _cifar100_dir(split: str, data_root, download: bool) -> Path:
    def fetch(root: Path) -> None:  # torchvision unpacks ROOT/cifar-100-python/
        from torchvision.datasets import CIFAR100

        CIFAR100(str(root), train=split == "train", download=True)

    return _locate(
        "cifar100", _candidate_dirs(data_root, ["SMOOTHADV_DATA"]), ("cifar-100-python", ""),
        fmt.CIFAR100_FILES[split],
        "get the python version from https://www.cs.toronto.edu/~kriz/cifar.html "
        "(or pass --download) and give its folder with --data-root (config key data_root)",
        fetch if download else None,
    )


def _cifar100(split: str, data_root, download: bool, augment: bool) -> Dataset:
    """The 100 fine classes (the coarse superclass labels are not used)."""
    found = _cifar100_dir(split, data_root, download)
    images, labels = fmt.read_pickle_batches([found / f for f in fmt.CIFAR100_FILES[split]], 100,
                                             label_key="fine_labels")
    return ArrayDataset(images, labels, _small_image_transform(32, split == "train" and augment))


def _svhn_dir(split: str, data_root, download: bool) -> Path:
    def fetch(root: Path) -> None:  # torchvision saves ROOT/{split}_32x32.mat
        from torchvision.datasets import SVHN

        SVHN(str(root), split=split, download=True)

    return _locate(
        "svhn", _candidate_dirs(data_root, ["SMOOTHADV_DATA"]), ("", "svhn", "SVHN"),
        fmt.SVHN_FILES[split],
        "get the cropped digits (format 2) from http://ufldl.stanford.edu/housenumbers/ "
        "(or pass --download) and give their folder with --data-root (config key data_root)",
        fetch if download else None,
    )


def _svhn(split: str, data_root, download: bool, augment: bool) -> Dataset:
    """SVHN's train and test sets (format 2, the 'extra' set is not used); digit 0 is label 0."""
    images, labels = fmt.read_svhn_mat(_svhn_dir(split, data_root, download)
                                       / fmt.SVHN_FILES[split][0])
    return ArrayDataset(images, labels,
                        _small_image_transform(32, split == "train" and augment, flip=False))


def _imagenet32_dir(split: str, data_root, download: bool) -> Path:
    return _locate(
        "imagenet32", _candidate_dirs(data_root, ["SMOOTHADV_DATA"]),
        ("imagenet32", "Imagenet32", ""),
        _IMAGENET32_FILES[split],
        "download 'Imagenet32' (pickle batches) from https://image-net.org/download-images "
        "and give its folder with --data-root (config key data_root)",
    )


def _imagenet32(split: str, data_root, download: bool, augment: bool) -> Dataset:
    found = _imagenet32_dir(split, data_root, download)
    images, labels = fmt.read_pickle_batches([found / f for f in _IMAGENET32_FILES[split]], 1000,
                                             label_offset=1)
    return ArrayDataset(images, labels, _small_image_transform(32, split == "train" and augment))


def _fashion_mnist_dir(split: str, data_root, download: bool) -> Path:
    def fetch(root: Path) -> None:
        from torchvision.datasets import FashionMNIST

        FashionMNIST(str(root), train=split == "train", download=True)

    return _locate(
        "fashion_mnist",
        _candidate_dirs(data_root, ["SMOOTHADV_DATA"], [DEBIAN_FASHION_MNIST]),
        ("", "fashion-mnist", "FashionMNIST/raw"), fmt.FASHION_MNIST_FILES[split],
        "install Debian's package dataset-fashion-mnist, pass --download, or give the "
        "folder of the idx .gz files with --data-root (config key data_root)",
        fetch if download else None,
    )


def _fashion_mnist(split: str, data_root, download: bool, augment: bool) -> Dataset:
    images, labels = fmt.read_mnist_format(_fashion_mnist_dir(split, data_root, download), split)
    return ArrayDataset(images, labels)


def _mnist_dir(split: str, data_root, download: bool) -> Path:
    def fetch(root: Path) -> None:  # torchvision keeps the .gz files in ROOT/MNIST/raw
        from torchvision.datasets import MNIST

        MNIST(str(root), train=split == "train", download=True)

    # MNIST/raw and mnist/ first: Fashion-MNIST uses the same four file names.
    return _locate(
        "mnist", _candidate_dirs(data_root, ["SMOOTHADV_DATA"]), ("MNIST/raw", "mnist", ""),
        fmt.MNIST_FILES[split],
        "pass --download, or give the folder of the idx .gz files "
        "(train-images-idx3-ubyte.gz …) with --data-root (config key data_root)",
        fetch if download else None,
    )


def _mnist(split: str, data_root, download: bool, augment: bool) -> Dataset:
    images, labels = fmt.read_mnist_format(_mnist_dir(split, data_root, download), split)
    return ArrayDataset(images, labels)


def _imagenet_dir(split: str, data_root, download: bool) -> Path:
    sub = "train" if split == "train" else "val"
    candidates = _candidate_dirs(data_root, ["IMAGENET_DIR"])
    candidates = [c for c in candidates if c != Path("data")] or candidates
    found = next((c / sub for c in candidates if (c / sub).is_dir()), None)
    if found is None:
        raise _not_found(
            "imagenet", candidates, [f"{sub}/"],
            "give the ImageNet root (holding train/ and val/ class folders) with --data-root "
            "(config key data_root) or $IMAGENET_DIR",
        )
    return found


def _imagenet(split: str, data_root, download: bool, augment: bool) -> Dataset:
    from torchvision.datasets import ImageFolder
    from torchvision.transforms import v2

    found = _imagenet_dir(split, data_root, download)
    to_float = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]
    if split == "train" and augment:
        tf = v2.Compose([v2.RandomResizedCrop(224), v2.RandomHorizontalFlip(), *to_float])
    else:
        tf = v2.Compose([v2.Resize(256), v2.CenterCrop(224), *to_float])
    try:
        return ImageFolder(str(found), transform=tf)
    except (FileNotFoundError, OSError) as e:
        raise UserError(f"{found}: not an ImageFolder tree ({e})") from e


def synthetic_arrays(split: str, size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A small deterministic 4-class task: fixed random prototypes plus per-image noise.

    Prototypes come from seed 0, images from seed 1 (train) or 2 (test), so both splits share
    the classes but no image.
    """
    info = DATASETS["synthetic"]
    n = size if size is not None else (2048 if split == "train" else 512)
    protos = torch.rand((info.num_classes, *info.input_shape),
                        generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1 if split == "train" else 2)
    labels = torch.randint(info.num_classes, (n,), generator=g)
    x = 0.2 + 0.6 * protos[labels] + 0.1 * torch.randn((n, *info.input_shape), generator=g)
    images = (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return np.ascontiguousarray(images), labels.numpy().astype(np.int64)


def _synthetic(split: str, data_root, download: bool, augment: bool) -> Dataset:
    return ArrayDataset(*synthetic_arrays(split))


_LOCATORS: dict[str, Callable[[str, object, bool], Path]] = {
    "cifar10": _cifar10_dir,
    "imagenet": _imagenet_dir,
    "imagenet32": _imagenet32_dir,
    "fashion_mnist": _fashion_mnist_dir,
    "mnist": _mnist_dir,
    "cifar100": _cifar100_dir,
    "svhn": _svhn_dir,
}

_LOADERS = {
    "cifar10": _cifar10,
    "imagenet": _imagenet,
    "imagenet32": _imagenet32,
    "fashion_mnist": _fashion_mnist,
    "mnist": _mnist,
    "cifar100": _cifar100,
    "svhn": _svhn,
    "synthetic": _synthetic,
}


def load_dataset(
    name: str,
    split: str,
    data_root: str | Path | None = None,
    *,
    augment: bool = True,
    download: bool = False,
) -> Dataset:
    """The ``split`` ('train' or 'test'; ImageNet's 'test' is val/) of dataset ``name``.

    Training splits carry the recipe's augmentation unless ``augment`` is false. ``download``
    lets torchvision fetch CIFAR-10, CIFAR-100, SVHN, MNIST or Fashion-MNIST into the first
    candidate folder when the network allows (the files are then read by this package's own
    readers, as those the user supplies); otherwise a missing dataset raises a UserError naming
    every folder tried. An import path ``module:factory`` calls the user's factory
    (trainers.registry describes the contract).
    """
    dataset_info(name)
    if split not in SPLITS:
        raise UserError(f"split: unknown split {split!r}; expected one of {list(SPLITS)}")
    if is_import_path(name):
        dataset = resolve_import_path("dataset", name)(split, data_root, download=download,
                                                        augment=augment)
        if not (hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__")):
            raise UserError(f"dataset: {name!r} returned a {type(dataset).__name__}, not a "
                            "Dataset with __getitem__ and __len__")
        return dataset
    return _LOADERS[name](split, data_root, download, augment)


def locate_dataset(name: str, split: str, data_root: str | Path | None = None, *,
                   download: bool = False) -> Path | None:
    """The folder the split of ``name`` would be read from (None for in-memory synthetic data
    and for a user's factory, which finds its own files), without reading it; a missing
    dataset raises the UserError :func:`load_dataset` would."""
    dataset_info(name)
    if split not in SPLITS:
        raise UserError(f"split: unknown split {split!r}; expected one of {list(SPLITS)}")
    locator = _LOCATORS.get(name)
    return None if locator is None else locator(split, data_root, download)
