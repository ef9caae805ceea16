"""Datasets by name: shape, classes and normalization, and loaders that yield [0,1] pixels.

Every dataset returns ``(image, label)`` with ``image`` a float32 C×H×W tensor in [0,1]:
noise is added in pixel space and the model normalizes in its first layer (REFERENCE.md).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2

from trainers import data_formats as fmt
from trainers.errors import UserError

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
SPLITS = ("train", "test")


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a dataset."""

    name: str
    input_shape: tuple[int, int, int]  # C, H, W as the model sees it
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


DATASETS: dict[str, DatasetInfo] = {
    info.name: info
    for info in (
        DatasetInfo("cifar10", (3, 32, 32), 10, (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
        DatasetInfo("imagenet", (3, 224, 224), 1000, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        DatasetInfo("imagenet32", (3, 32, 32), 1000, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        DatasetInfo("fashion_mnist", (1, 28, 28), 10, (0.2860,), (0.3530,)),
        DatasetInfo("synthetic", (1, 16, 16), 4, (0.5,), (0.25,)),
    )
}


def dataset_info(name: str) -> DatasetInfo:
    try:
        return DATASETS[name]
    except KeyError:
        raise UserError(
            f"dataset: unknown dataset {name!r}; expected one of {sorted(DATASETS)}"
        ) from None


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


def _small_image_transform(side: int, train: bool) -> Callable | None:
    """CIFAR-style augmentation (random crop with 4-pixel padding, horizontal flip) on uint8."""
    if not train:
        return None
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


def _cifar10(split: str, data_root, download: bool, augment: bool) -> Dataset:
    from torchvision.datasets import CIFAR10

    files = fmt.CIFAR10_TRAIN_FILES if split == "train" else fmt.CIFAR10_TEST_FILES

    def fetch(root: Path) -> None:
        CIFAR10(str(root), train=split == "train", download=True)

    found = _locate(
        "cifar10", _candidate_dirs(data_root, ["SMOOTHADV_DATA"]), ("cifar-10-batches-py", ""),
        files,
        "get the python version from https://www.cs.toronto.edu/~kriz/cifar.html "
        "(or pass --download) and give its folder with --data-root",
        fetch if download else None,
    )
    images, labels = fmt.read_pickle_batches([found / f for f in files], 10)
    return ArrayDataset(images, labels, _small_image_transform(32, split == "train" and augment))


def _imagenet32(split: str, data_root, download: bool, augment: bool) -> Dataset:
    files = fmt.IMAGENET32_TRAIN_FILES if split == "train" else fmt.IMAGENET32_TEST_FILES
    found = _locate(
        "imagenet32", _candidate_dirs(data_root, ["SMOOTHADV_DATA"]),
        ("imagenet32", "Imagenet32", ""), files,
        "download 'Imagenet32' (pickle batches) from https://image-net.org/download-images "
        "and give its folder with --data-root",
    )
    images, labels = fmt.read_pickle_batches([found / f for f in files], 1000, label_offset=1)
    return ArrayDataset(images, labels, _small_image_transform(32, split == "train" and augment))


def _fashion_mnist(split: str, data_root, download: bool, augment: bool) -> Dataset:
    from torchvision.datasets import FashionMNIST

    def fetch(root: Path) -> None:
        FashionMNIST(str(root), train=split == "train", download=True)

    found = _locate(
        "fashion_mnist",
        _candidate_dirs(data_root, ["SMOOTHADV_DATA"], [DEBIAN_FASHION_MNIST]),
        ("", "fashion-mnist", "FashionMNIST/raw"), fmt.FASHION_MNIST_FILES[split],
        "install Debian's package dataset-fashion-mnist, pass --download, or give the "
        "folder of the idx .gz files with --data-root",
        fetch if download else None,
    )
    images, labels = fmt.read_fashion_mnist(found, split)
    return ArrayDataset(images, labels)


def _imagenet(split: str, data_root, download: bool, augment: bool) -> Dataset:
    from torchvision.datasets import ImageFolder

    sub = "train" if split == "train" else "val"
    candidates = _candidate_dirs(data_root, ["IMAGENET_DIR"])
    candidates = [c for c in candidates if c != Path("data")] or candidates
    found = next((c / sub for c in candidates if (c / sub).is_dir()), None)
    if found is None:
        raise _not_found(
            "imagenet", candidates, [f"{sub}/"],
            "give the ImageNet root (holding train/ and val/ class folders) with --data-root "
            "or $IMAGENET_DIR",
        )
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


_LOADERS = {
    "cifar10": _cifar10,
    "imagenet": _imagenet,
    "imagenet32": _imagenet32,
    "fashion_mnist": _fashion_mnist,
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
    lets torchvision fetch CIFAR-10 or Fashion-MNIST into the first candidate folder when the
    network allows; otherwise a missing dataset raises a UserError naming every folder tried.
    """
    dataset_info(name)
    if split not in SPLITS:
        raise UserError(f"split: unknown split {split!r}; expected one of {list(SPLITS)}")
    return _LOADERS[name](split, data_root, download, augment)
