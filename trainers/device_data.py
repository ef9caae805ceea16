"""Training images held on the training device and augmented there, a whole batch at a time.

The paper's augmentation of small images: SmoothAdv (Salman et al. 2019) trains CIFAR-10 as
Cohen et al. (2019) do, whose reference code (and Hadisalman/smoothing-adversarial after it)
composes ``RandomCrop(32, padding=4)`` and ``RandomHorizontalFlip()``: a 32×32 crop of the
image zero-padded by 4 pixels on each side, at one of its 9×9 positions uniformly, then a
mirror image with probability 1/2. trainers.datasets gives each in-memory dataset
(:class:`~smoothadv.trainers.datasets.ArrayDataset`) that augmentation as a torchvision
transform run image by image in the loader (SVHN without the flip, MNIST and Fashion-MNIST
without any); :func:`augmentation_of` reads the description back from that transform object,
so there is one definition of it, and a transform it does not recognise keeps the loader path.

:class:`DeviceImages` holds the uint8 N×H×W×C images (on the CPU the dataset's own array,
zero-copy; on CUDA one copy made once) and the labels on the device, and makes a batch without
a Python loop over images: the batch's images taken by index, every image's crop offsets and
flip drawn in one go from the device's global generator, and one gather of each image's window
of the padded batch (:func:`_crop_and_flip`). The result is what the loader's batch is: float32
N×C×H×W in [0,1] (``x.float() / 255``, bit for bit), int64 labels.

The epoch's order is the loader path's by construction: trainers.train iterates the same
DataLoader (or DistributedSampler) over the index dataset ``range(n)`` that it would over the
images, with the same generator, so each batch holds the same images in the same order. Only
the draws of crops and flips differ (one batched draw instead of one per image): the same
distribution (tests/test_device_data.py checks both).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from smoothadv.common.errors import UserError
from smoothadv.trainers.config import TrialConfig
from smoothadv.trainers.datasets import ArrayDataset
from torch.utils.data import Subset

# Automatic choice (``data_on_device: null``). The CPU: on, for benchmarks/data_path_speed.py
# measured the device path at 10× the loader's images/s on CIFAR-sized batches (2 threads; 6.8×
# on 1), a few milliseconds per batch of 256 either way beside a training step's seconds.
AUTO_ON_CPU = True
# CUDA: on when the uint8 training set takes under this share of the device's free memory.
CUDA_SHARE = 0.25


@dataclass(frozen=True)
class Augmentation:
    """A random crop of the image zero-padded by ``padding`` pixels on each side (offsets
    uniform in {0, …, 2·padding} per axis; 0: no crop), then a horizontal flip with
    probability ``flip_p``: ``RandomCrop(side, padding)`` and ``RandomHorizontalFlip(flip_p)``."""

    padding: int = 0
    flip_p: float = 0.0


def augmentation_of(transform: Any, height: int, width: int) -> Augmentation | None:
    """The :class:`Augmentation` a dataset's uint8 transform performs on H×W images: None
    (no transform), a ``v2.RandomCrop`` of the full side with equal zero padding, a
    ``v2.RandomHorizontalFlip``, or the two composed in that order. Anything else is None."""
    if transform is None:
        return Augmentation()
    from torchvision.transforms import v2  # loaded already: the transform is one of its own

    steps = list(transform.transforms) if type(transform) is v2.Compose else [transform]
    padding, flip_p = 0, 0.0
    if steps and type(steps[0]) is v2.RandomCrop:
        crop = steps.pop(0)
        pads = list(crop.padding or [0, 0, 0, 0])
        if (tuple(crop.size) != (height, width) or crop.pad_if_needed or len(set(pads)) != 1
                or crop.padding_mode != "constant" or not _is_zero(crop.fill)):
            return None
        padding = int(pads[0])
    if steps and type(steps[0]) is v2.RandomHorizontalFlip:
        flip_p = float(steps.pop(0).p)
    return None if steps else Augmentation(padding, flip_p)


def _is_zero(fill: Any) -> bool:
    return isinstance(fill, int | float) and fill == 0


class DeviceImages:
    """uint8 N×H×W×C images and their labels on one device, with the augmentation of every
    batch drawn there (module docstring)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, augmentation: Augmentation,
                 device: torch.device):
        with warnings.catch_warnings():  # a read-only array (never written here) warns
            warnings.simplefilter("ignore", UserWarning)
            host = torch.from_numpy(np.ascontiguousarray(images))
        self.images = host.to(device)  # the same tensor on the CPU
        self.labels = torch.as_tensor(np.asarray(labels), dtype=torch.int64).to(device)
        self.augmentation = augmentation
        self.device = torch.device(device)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def indices(self) -> range:
        """The index dataset the epoch's DataLoader or DistributedSampler iterates."""
        return range(len(self))

    def batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The augmented images (float32 B×C×H×W in [0,1], contiguous) and labels at
        ``indices``."""
        idx = indices.to(self.device, torch.int64, non_blocking=True)  # no stream sync
        pixels = self.images.index_select(0, idx)  # B×H×W×C
        aug = self.augmentation
        if aug.padding or aug.flip_p:
            pixels = _crop_and_flip(pixels, aug)  # B×C×H×W
        else:
            pixels = pixels.permute(0, 3, 1, 2).contiguous()
        return pixels.div(255.0), self.labels[idx]  # float32: x.float() / 255, in one op

    def batches(self, index_batches: Iterable[torch.Tensor]
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """``(x, y)`` for each batch of indices (the epoch's DataLoader over :attr:`indices`)."""
        for indices in index_batches:
            yield self.batch(indices)


def _crop_and_flip(pixels: torch.Tensor, aug: Augmentation) -> torch.Tensor:
    """B×H×W×C uint8 → B×C×H×W uint8, each image cropped at offsets (dy, dx) uniform in
    {0, …, 2p} from its copy zero-padded by p, then flipped with probability ``flip_p``.

    One gather: every crop position of the padded batch and of its mirror image is a strided
    window (``unfold``, no copy), and image b takes window [flip_b, b, dy_b, dx'_b], where
    dx' = 2p − dx when flipped (the mirror of the crop at dx is the crop of the mirrored
    padding at 2p − dx)."""
    b, h, w, _ = pixels.shape
    p, device = aug.padding, pixels.device
    padded = torch.nn.functional.pad(pixels, (0, 0, p, p, p, p))  # B×(H+2p)×(W+2p)×C
    dy = torch.randint(0, 2 * p + 1, (b,), device=device)
    dx = torch.randint(0, 2 * p + 1, (b,), device=device)
    flip = torch.rand(b, device=device) < aug.flip_p
    both = torch.stack([padded, padded.flip(2)])  # [plain, mirrored]
    windows = both.unfold(2, h, 1).unfold(3, w, 1)  # 2×B×(2p+1)×(2p+1)×C×H×W
    dx = torch.where(flip, 2 * p - dx, dx)
    return windows[flip.long(), torch.arange(b, device=device), dy, dx]


def _in_memory(config: TrialConfig,
               train_set: Any) -> tuple[np.ndarray, np.ndarray, Augmentation] | str:
    """The uint8 images, labels and augmentation of ``train_set`` (an ArrayDataset, or its
    first k images: ``train_subset``), or why they cannot go on the device."""
    if config.extra_data is not None:
        return "self-training (extra_data) reads its batches through the loader"
    dataset, size = train_set, len(train_set)
    if isinstance(dataset, Subset):
        indices = dataset.indices
        if not (isinstance(indices, range) and indices.start == 0 and indices.step == 1):
            return "the training set is a subset other than the first images"
        dataset = dataset.dataset
    if type(dataset) is not ArrayDataset:
        return (f"the training set is a {type(dataset).__name__}, not in-memory images "
                "(cifar10, cifar100, svhn, mnist, fashion_mnist, imagenet32, synthetic)")
    images = dataset.images
    if not (isinstance(images, np.ndarray) and images.dtype == np.uint8 and images.ndim == 4):
        return "the training images are not a uint8 N×H×W×C array"
    augmentation = augmentation_of(dataset.transform, *images.shape[1:3])
    if augmentation is None:
        return (f"its transform ({type(dataset.transform).__name__}) is not a zero-padded "
                "random crop and horizontal flip")
    return images[:size], np.asarray(dataset.labels)[:size], augmentation


def device_images(config: TrialConfig, train_set: Any,
                  device: torch.device) -> DeviceImages | None:
    """The trial's training images on ``device``, or None for the loader path, as
    ``data_on_device`` asks: false, never; true, always (a UserError naming the key when
    impossible); null, where possible and on the CPU (:data:`AUTO_ON_CPU`) or on CUDA when the
    uint8 set takes under :data:`CUDA_SHARE` of the free memory."""
    wanted = config.data_on_device
    if wanted is False:
        return None
    found = _in_memory(config, train_set)
    if isinstance(found, str):
        if wanted:
            raise UserError(f"data_on_device: true, but {found}; set it to null or false")
        return None
    images, labels, augmentation = found
    device = torch.device(device)
    if wanted is None and not _auto_fits(images.nbytes, device):
        return None
    return DeviceImages(images, labels, augmentation, device)


def _auto_fits(nbytes: int, device: torch.device) -> bool:
    """Whether ``data_on_device: null`` puts ``nbytes`` of images on ``device``."""
    if device.type == "cpu":
        return AUTO_ON_CPU
    if device.type == "cuda":
        return nbytes < CUDA_SHARE * torch.cuda.mem_get_info(device)[0]
    return False
