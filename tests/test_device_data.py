"""Training images on the device (trainers.device_data, ``data_on_device``): the loader path's
batches in the loader path's order, its crops and flips in distribution, one-line refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import chi2_contingency, chisquare
from smoothadv.common.errors import UserError
from smoothadv.trainers import device_data
from smoothadv.trainers.config import parse_trial_config
from smoothadv.trainers.datasets import ArrayDataset, _small_image_transform
from smoothadv.trainers.device_data import Augmentation, DeviceImages, augmentation_of
from smoothadv.trainers.train import TrialData, epoch_batches
from torch.utils.data import Subset, TensorDataset
from torchvision.transforms import v2

ALPHA = 1e-5  # a correct augmentation fails this chi-square test once in 100,000 seeds
PAD = 4


def trial_data(dataset, subset: int, batch: int, world: int, on_device: bool):
    """(TrialData, config) of a trial on the first ``subset`` images of ``dataset``."""
    config = parse_trial_config({"dataset": "synthetic", "batch_size": batch, "seed": 3,
                                 "device": "cpu", "data_on_device": on_device})
    train_set = Subset(dataset, range(subset))
    images = device_data.device_images(config, train_set, torch.device("cpu"))
    assert (images is not None) == on_device
    return TrialData(train_set, None, None, batch // world, {}, images), config


def epoch(dataset, subset, batch, world, rank, on_device, number):
    data, config = trial_data(dataset, subset, batch, world, on_device)
    batches, count = epoch_batches(data, config, number, rank, world)
    out = [(x, y) for x, y, _ in batches]
    assert len(out) == count
    return out, torch.get_rng_state()


@pytest.mark.parametrize("world,rank", [(1, 0), (2, 1)])
def test_the_batches_hold_the_loaders_images_in_its_order(world, rank):
    """Every label is its image's index: the same indices, batch for batch, in each epoch (a
    train_subset of 50 of 61 images; a DDP share: rank 1 of 2)."""
    rng = np.random.default_rng(0)
    dataset = ArrayDataset(rng.integers(0, 256, (61, 8, 8, 3), dtype=np.uint8),
                           np.arange(61), _small_image_transform(8, train=True))
    for number in (0, 1):
        runs = [epoch(dataset, 50, 16, world, rank, on, number)[0] for on in (False, True)]
        labels = [[y.tolist() for _, y in run] for run in runs]
        assert labels[0] == labels[1]
        assert sum(len(b) for b in labels[0]) == 50 // world
    assert labels[0][0] != sorted(labels[0][0])  # shuffled


def test_without_augmentation_the_batches_equal_the_loaders():
    """Fashion-MNIST-like (no transform): the same tensors, and the global generator left
    where the loader leaves it, so the noise drawn next is the same too."""
    rng = np.random.default_rng(1)
    dataset = ArrayDataset(rng.integers(0, 256, (40, 28, 28, 1), dtype=np.uint8),
                           rng.integers(0, 10, 40))
    (loader, state_a), (device, state_b) = (epoch(dataset, 35, 16, 1, 0, on, 0)
                                            for on in (False, True))
    assert len(loader) == len(device) == 3
    for (xa, ya), (xb, yb) in zip(loader, device, strict=True):
        assert xa.dtype == xb.dtype == torch.float32 and xb.is_contiguous()
        assert torch.equal(xa, xb) and torch.equal(ya, yb) and ya.dtype == yb.dtype
    assert torch.equal(state_a, state_b)


def _position_image() -> np.ndarray:
    """32×32×3: channel 0 holds row + 1, channel 1 column + 1 (0 only in the padding)."""
    rows, cols = np.meshgrid(np.arange(1, 33), np.arange(1, 33), indexing="ij")
    return np.stack([rows, cols, np.full_like(rows, 255)], axis=-1).astype(np.uint8)


def _cells(x: torch.Tensor) -> np.ndarray:
    """Each augmented image's (dy, dx, flip) as one of 9·9·2 cells, read off its centre."""
    pixels = (x * 255).round().long()
    row, col, right = pixels[:, 0, 16, 16] - 1, pixels[:, 1, 16, 16] - 1, pixels[:, 1, 16, 17] - 1
    flip = right < col
    dy = row - 16 + PAD
    dx = col - torch.where(flip, 15, 16) + PAD
    assert ((dy >= 0) & (dy <= 2 * PAD) & (dx >= 0) & (dx <= 2 * PAD)).all()
    return ((dy * 9 + dx) * 2 + flip.long()).numpy()


def _histogram(cells: np.ndarray) -> np.ndarray:
    return np.bincount(cells, minlength=9 * 9 * 2)


N_DRAWS = 4000


@pytest.fixture(scope="module")
def loader_histogram():
    """The loader path's crops and flips (ArrayDataset.__getitem__, image by image)."""
    torch.manual_seed(0)
    dataset = ArrayDataset(_position_image()[None], np.zeros(1, np.int64),
                           _small_image_transform(32, train=True))
    return _histogram(_cells(torch.stack([dataset[0][0] for _ in range(N_DRAWS)])))


def _device_histogram(augmentation: Augmentation) -> np.ndarray:
    torch.manual_seed(1)
    images = DeviceImages(_position_image()[None], np.zeros(1, np.int64), augmentation,
                          torch.device("cpu"))
    x, _ = images.batch(torch.zeros(N_DRAWS, dtype=torch.int64))
    return _histogram(_cells(x))


def _p_value(loader_histogram, device_histogram) -> float:
    return chi2_contingency(np.stack([loader_histogram, device_histogram])).pvalue


def test_crops_and_flips_follow_the_loaders_distribution(loader_histogram):
    """Offsets uniform in {0..8} on each axis, flip with p = 1/2: the device path's histogram of
    (dy, dx, flip) is the loader's (chi-square, both against each other and against uniform)."""
    augmentation = augmentation_of(_small_image_transform(32, train=True), 32, 32)
    assert augmentation == Augmentation(padding=4, flip_p=0.5)
    device = _device_histogram(augmentation)
    assert _p_value(loader_histogram, device) > ALPHA
    for counts in (loader_histogram, device):
        assert chisquare(counts).pvalue > ALPHA


@pytest.mark.parametrize("broken", ["offsets in 0..7", "flip p=0.3"])
def test_the_distribution_test_sees_a_broken_augmentation(loader_histogram, monkeypatch,
                                                          broken):
    """The test above has the power to fail: offsets never 8, or too few flips."""
    if broken == "flip p=0.3":
        device = _device_histogram(Augmentation(padding=4, flip_p=0.3))
    else:
        randint = torch.randint
        monkeypatch.setattr(torch, "randint", lambda low, high, *a, **k: randint(low, high - 1,
                                                                                 *a, **k))
        device = _device_histogram(Augmentation(padding=4, flip_p=0.5))
    assert _p_value(loader_histogram, device) < ALPHA


def test_the_augmentation_is_read_from_the_datasets_transform():
    assert augmentation_of(_small_image_transform(32, train=True, flip=False), 32, 32) == \
        Augmentation(padding=4, flip_p=0.0)  # SVHN
    assert augmentation_of(None, 28, 28) == Augmentation()  # MNIST, Fashion-MNIST, synthetic
    assert augmentation_of(v2.RandomCrop(32, padding=4), 28, 28) is None  # not the full side
    assert augmentation_of(v2.RandomCrop(32, padding=4, fill=1), 32, 32) is None
    assert augmentation_of(v2.Compose([v2.RandomHorizontalFlip(), v2.RandomCrop(32, 4)]),
                           32, 32) is None
    assert augmentation_of(v2.RandomRotation(10), 32, 32) is None


def test_data_on_device_true_where_impossible_is_one_line_naming_the_key():
    base = {"dataset": "synthetic", "data_on_device": True}
    for extra in ({"extra_data": "pseudo.pkl"}, {"dataset": "imagenet"}):
        with pytest.raises(UserError) as refusal:
            parse_trial_config({**base, **extra})
        assert str(refusal.value).startswith("data_on_device: true needs")
        assert "\n" not in str(refusal.value)
    tensors = TensorDataset(torch.zeros(4, 1, 8, 8), torch.zeros(4, dtype=torch.int64))
    with pytest.raises(UserError) as refusal:
        device_data.device_images(parse_trial_config(base), tensors, torch.device("cpu"))
    assert str(refusal.value).startswith("data_on_device: true, but the training set is a "
                                         "TensorDataset")
    assert "\n" not in str(refusal.value)
    # null (automatic): the loader path for these, with no complaint
    auto = parse_trial_config({**base, "data_on_device": None, "extra_data": "pseudo.pkl"})
    arrays = ArrayDataset(np.zeros((4, 8, 8, 1), np.uint8), np.zeros(4, np.int64))
    assert device_data.device_images(auto, arrays, torch.device("cpu")) is None
    assert device_data.device_images(parse_trial_config({**base, "data_on_device": None}),
                                     tensors, torch.device("cpu")) is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_cuda_the_batches_are_the_cpus_and_augment_alike(loader_histogram):
    rng = np.random.default_rng(2)
    images, labels = rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8), np.arange(20)
    idx = torch.tensor([3, 1, 4, 1, 5])
    cpu, cuda = (DeviceImages(images, labels, Augmentation(), torch.device(d)).batch(idx)
                 for d in ("cpu", "cuda"))
    assert cuda[0].device.type == "cuda" and torch.equal(cpu[0], cuda[0].cpu())
    torch.manual_seed(1)
    on_cuda = DeviceImages(_position_image()[None], np.zeros(1, np.int64),
                           Augmentation(4, 0.5), torch.device("cuda"))
    x, _ = on_cuda.batch(torch.zeros(N_DRAWS, dtype=torch.int64))
    assert _p_value(loader_histogram, _histogram(_cells(x.cpu()))) > ALPHA
