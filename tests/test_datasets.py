"""Datasets read from tiny files in the real on-disk formats, through ``trainers.load_dataset``."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from formats import (
    FASHION_MNIST_FILES,
    MARK_COL,
    MARK_RGB,
    MARK_ROW,
    flat_index,
    write_cifar10,
    write_cifar100,
    write_fashion_mnist,
    write_idx_gz,
    write_imagefolder,
    write_imagenet32,
    write_mnist,
    write_svhn,
)
from smoothadv.common.errors import UserError
from smoothadv.trainers import dataset_info, load_dataset
from smoothadv.trainers import datasets as trainer_datasets

# Real Fashion-MNIST where `make test` puts it: Debian's package, or torchvision's download into
# the repository's ./data when apt is not usable.
REAL_FASHION = next((p for p in (Path("/usr/share/datasets/fashion-mnist"),
                                 Path(__file__).resolve().parent.parent / "data/FashionMNIST/raw")
                     if (p / "t10k-images-idx3-ubyte.gz").is_file()), None)


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No ./data, no $SMOOTHADV_DATA / $IMAGENET_DIR and no Debian Fashion-MNIST leak in."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SMOOTHADV_DATA", raising=False)
    monkeypatch.delenv("IMAGENET_DIR", raising=False)
    monkeypatch.setattr(trainer_datasets, "DEBIAN_FASHION_MNIST", tmp_path / "no-debian-fmnist")
    return tmp_path


def expected_chw(rows: np.ndarray, i: int) -> np.ndarray:
    """Image ``i`` of flat CIFAR rows as C×H×W floats in [0,1], indexed element by element."""
    out = np.empty((3, 32, 32), dtype=np.float32)
    for ch in range(3):
        for r in range(32):
            for c in range(32):
                out[ch, r, c] = rows[i, flat_index(ch, r, c)]
    return out / 255.0


def check_items(ds, name: str, labels, pixels) -> None:
    """Every item of ``ds`` is a valid ``name`` item with label ``labels[i]`` and exactly the
    C×H×W pixels ``pixels(i)`` (floats in [0, 1])."""
    assert len(ds) == len(labels)
    for i in range(len(ds)):
        x, y = ds[i]
        check_item(x, y, name)
        assert y == int(labels[i])
        np.testing.assert_array_equal(x.numpy(), pixels(i))


def check_item(x, y, name: str) -> None:
    info = dataset_info(name)
    assert isinstance(x, torch.Tensor)
    assert x.dtype == torch.float32
    assert tuple(x.shape) == info.input_shape
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert isinstance(y, int) and 0 <= y < info.num_classes


# --------------------------------------------------------------------------- CIFAR-10


@pytest.mark.parametrize("split", ["train", "test"])
def test_cifar10_exact_pixels_and_labels(isolated, split):
    written = write_cifar10(isolated / "root", per_batch=3, seed=1)
    rows, labels = written[split]
    ds = load_dataset("cifar10", split, isolated / "root", augment=False, download=False)
    assert len(ds) == (15 if split == "train" else 3)
    check_items(ds, "cifar10", labels, lambda i: expected_chw(rows, i))


def test_cifar10_marker_pixel_channel_layout(isolated):
    write_cifar10(isolated, per_batch=2, seed=2)
    ds = load_dataset("cifar10", "test", isolated, download=False)
    x, _ = ds[0]
    for ch, value in enumerate(MARK_RGB):
        assert x[ch, MARK_ROW, MARK_COL].item() == np.float32(value) / np.float32(255)
    # Not transposed: (col, row) holds something else in at least one channel.
    assert [round(x[ch, MARK_COL, MARK_ROW].item() * 255) for ch in range(3)] != list(MARK_RGB)


def test_cifar10_batches_directly_in_root(isolated):
    written = write_cifar10(isolated / "w", per_batch=2, seed=3)
    ds = load_dataset("cifar10", "test", isolated / "w" / "cifar-10-batches-py")
    assert len(ds) == 2
    assert ds[1][1] == written["test"][1][1]


def test_cifar10_train_augmentation_is_crop_and_flip(isolated):
    written = write_cifar10(isolated, per_batch=2, seed=4)
    rows, _ = written["train"]
    raw = expected_chw(rows, 0)
    padded = np.pad(raw, ((0, 0), (4, 4), (4, 4)))
    candidates = []
    for i in range(9):
        for j in range(9):
            crop = padded[:, i : i + 32, j : j + 32]
            candidates += [crop, crop[:, :, ::-1]]
    ds = load_dataset("cifar10", "train", isolated, augment=True)
    torch.manual_seed(0)
    draws = [ds[0][0] for _ in range(12)]
    for x in draws:
        check_item(x, ds[0][1], "cifar10")
        assert any(np.array_equal(x.numpy(), c) for c in candidates), "not a crop/flip of image 0"
    assert any(not np.array_equal(x.numpy(), raw) for x in draws), "augmentation never changed it"
    # The test split is never augmented.
    test = load_dataset("cifar10", "test", isolated, augment=True)
    np.testing.assert_array_equal(test[0][0].numpy(), expected_chw(written["test"][0], 0))


def test_cifar10_truncated_pickle_names_file(isolated):
    write_cifar10(isolated, per_batch=4, seed=5)
    bad = isolated / "cifar-10-batches-py" / "data_batch_3"
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError) as err:
        load_dataset("cifar10", "train", isolated)
    assert str(bad) in str(err.value)


def test_cifar10_wrong_row_length_names_file(isolated):
    write_cifar10(isolated, per_batch=2, seed=6)
    bad = isolated / "cifar-10-batches-py" / "test_batch"
    bad.write_bytes(pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}))
    with pytest.raises(UserError) as err:
        load_dataset("cifar10", "test", isolated)
    assert str(bad) in str(err.value)


def test_cifar10_rows_and_labels_must_match_in_each_file(isolated):
    # 3 images with 2 labels, then 1 image with 2 labels: the totals agree, the pairs do not.
    write_cifar10(isolated, per_batch=2, seed=20)
    folder = isolated / "cifar-10-batches-py"
    first = folder / "data_batch_1"
    first.write_bytes(pickle.dumps({b"data": np.zeros((3, 3072), np.uint8), b"labels": [0, 1]}))
    second = folder / "data_batch_2"
    second.write_bytes(pickle.dumps({b"data": np.ones((1, 3072), np.uint8), b"labels": [2, 3]}))
    with pytest.raises(UserError) as err:
        load_dataset("cifar10", "train", isolated, augment=False)
    assert str(first) in str(err.value)


def test_cifar10_label_out_of_range_names_file(isolated):
    write_cifar10(isolated, per_batch=2, seed=21)
    bad = isolated / "cifar-10-batches-py" / "test_batch"
    bad.write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 12]}))
    with pytest.raises(UserError) as err:
        load_dataset("cifar10", "test", isolated)
    assert str(bad) in str(err.value) or str(bad.parent) in str(err.value)


def test_cifar10_pickle_naming_unknown_global_names_file(isolated):
    write_cifar10(isolated, per_batch=2, seed=22)
    bad = isolated / "cifar-10-batches-py" / "test_batch"
    bad.write_bytes(b"\x80\x02cno_such_module_xyz\nthing\nq\x00.")
    with pytest.raises(UserError) as err:
        load_dataset("cifar10", "test", isolated)
    assert str(bad) in str(err.value)


# --------------------------------------------------------------------------- ImageNet-32


@pytest.mark.parametrize("split", ["train", "test"])
def test_imagenet32_pixels_and_zero_based_labels(isolated, split):
    written = write_imagenet32(isolated / "imagenet32", per_batch=2, seed=7)
    rows, labels = written[split]
    ds = load_dataset("imagenet32", split, isolated, augment=False)
    assert len(ds) == (20 if split == "train" else 2)
    check_items(ds, "imagenet32", [label - 1 for label in labels],
                lambda i: expected_chw(rows, i))
    if split == "train":
        assert ds[0][1] == 0 and ds[1][1] == 999
    x, _ = ds[0]
    assert [round(x[ch, MARK_ROW, MARK_COL].item() * 255) for ch in range(3)] == list(MARK_RGB)


def test_imagenet32_train_augmentation_keeps_shape_and_range(isolated):
    write_imagenet32(isolated, per_batch=1, seed=8)
    ds = load_dataset("imagenet32", "train", isolated, augment=True)
    torch.manual_seed(1)
    for _ in range(5):
        x, y = ds[0]
        check_item(x, y, "imagenet32")
        # Values are still whole multiples of 1/255.
        np.testing.assert_allclose(x.numpy() * 255, np.round(x.numpy() * 255), atol=1e-4)


def test_imagenet32_truncated_pickle_names_file(isolated):
    write_imagenet32(isolated, per_batch=3, seed=9)
    bad = isolated / "val_data"
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    with pytest.raises(UserError) as err:
        load_dataset("imagenet32", "test", isolated)
    assert str(bad) in str(err.value)


# --------------------------------------------------------------------------- Fashion-MNIST


@pytest.mark.parametrize("split", ["train", "test"])
def test_fashion_mnist_exact_pixels(isolated, split):
    written = write_fashion_mnist(isolated / "fm", n_train=5, n_test=3, seed=10)
    images, labels = written[split]
    ds = load_dataset("fashion_mnist", split, isolated / "fm", augment=True)
    # Row-major: (row, col) of the idx image is x[0, row, col], no augmentation ever.
    check_items(ds, "fashion_mnist", labels, lambda i: images[i][None] / np.float32(255.0))


def test_idx_writer_magic_numbers(tmp_path):
    write_idx_gz(tmp_path / "l.gz", np.arange(5, dtype=np.uint8))
    write_idx_gz(tmp_path / "i.gz", np.zeros((2, 3, 4), np.uint8))
    with gzip.open(tmp_path / "l.gz") as f:
        assert f.read(8) == bytes.fromhex("00000801") + (5).to_bytes(4, "big")
    with gzip.open(tmp_path / "i.gz") as f:
        assert f.read(16) == bytes.fromhex("00000803") + b"".join(
            d.to_bytes(4, "big") for d in (2, 3, 4)
        )


def test_fashion_mnist_bad_magic_names_file(isolated):
    write_fashion_mnist(isolated, n_train=2, n_test=2, seed=11)
    bad = isolated / FASHION_MNIST_FILES["test"][0]
    with gzip.open(bad, "rb") as f:
        raw = f.read()
    with gzip.open(bad, "wb") as f:
        f.write(b"\x12\x34" + raw[2:])
    with pytest.raises(UserError) as err:
        load_dataset("fashion_mnist", "test", isolated)
    assert str(bad) in str(err.value)
    assert "magic" in str(err.value)


def test_fashion_mnist_truncated_payload_names_file(isolated):
    write_fashion_mnist(isolated, n_train=2, n_test=2, seed=12)
    bad = isolated / FASHION_MNIST_FILES["train"][1]
    with gzip.open(bad, "rb") as f:
        raw = f.read()
    with gzip.open(bad, "wb") as f:
        f.write(raw[:-1])
    with pytest.raises(UserError) as err:
        load_dataset("fashion_mnist", "train", isolated)
    assert str(bad) in str(err.value)


def test_fashion_mnist_not_gzip_names_file(isolated):
    write_fashion_mnist(isolated, n_train=2, n_test=2, seed=13)
    bad = isolated / FASHION_MNIST_FILES["test"][1]
    bad.write_bytes(b"this is not gzip at all")
    with pytest.raises(UserError) as err:
        load_dataset("fashion_mnist", "test", isolated)
    assert str(bad) in str(err.value)


def test_fashion_mnist_corrupt_gzip_stream_names_file(isolated):
    write_fashion_mnist(isolated, n_train=2, n_test=50, seed=23)
    bad = isolated / FASHION_MNIST_FILES["test"][0]
    data = bytearray(bad.read_bytes())
    for i in range(20, len(data) - 20, 7):  # damage the deflate stream, keep the gzip header
        data[i] ^= 0xFF
    bad.write_bytes(bytes(data))
    with pytest.raises(UserError) as err:
        load_dataset("fashion_mnist", "test", isolated)
    assert str(bad) in str(err.value)


@pytest.mark.skipif(REAL_FASHION is None, reason="real Fashion-MNIST is in neither Debian's "
                    "folder nor ./data/FashionMNIST/raw (make test fetches it)")
def test_real_fashion_mnist(isolated, monkeypatch):
    test = load_dataset("fashion_mnist", "test", REAL_FASHION)
    assert len(test) == 10000
    labels = [test[i][1] for i in range(len(test))]
    assert sorted(set(labels)) == list(range(10))
    assert np.bincount(labels).tolist() == [1000] * 10
    # Published order: Ankle boot, Pullover, Trouser, Trouser, Shirt.
    assert labels[:5] == [9, 2, 1, 1, 6]
    x, _ = test[0]
    check_item(x, 9, "fashion_mnist")
    with gzip.open(REAL_FASHION / "t10k-images-idx3-ubyte.gz") as f:
        first = np.frombuffer(f.read(16 + 784)[16:], np.uint8).reshape(28, 28)
    np.testing.assert_array_equal(x[0].numpy(), first.astype(np.float32) / 255.0)

    # The default folder is also found with no --data-root.
    monkeypatch.setattr(trainer_datasets, "DEBIAN_FASHION_MNIST", REAL_FASHION)
    train = load_dataset("fashion_mnist", "train")
    assert len(train) == 60000
    assert train[0][1] == 9
    check_item(*train[0], "fashion_mnist")


# --------------------------------------------------------------------------- ImageNet (folders)


def test_imagenet_folder_test_transform(isolated):
    written = write_imagefolder(isolated / "inet", ["b_cls", "a_cls"], 2, size=(20, 24), solid=True)
    ds = load_dataset("imagenet", "test", isolated / "inet")
    assert len(ds) == 4
    by_path = {str(p): (label, px) for p, label, px in written["val"]}
    for i in range(len(ds)):
        x, y = ds[i]
        check_item(x, y, "imagenet")
        path = ds.samples[i][0]
        label, pixels = by_path[path]
        assert y == label
        # A solid image stays solid through resize and crop: channel c is colour[c] / 255.
        for ch in range(3):
            np.testing.assert_allclose(x[ch].numpy(), pixels[0, 0, ch] / 255.0, atol=1e-6)
    assert ds.classes == ["a_cls", "b_cls"]


def test_imagenet_folder_train_augmentation(isolated):
    write_imagefolder(isolated / "inet", ["x", "y"], 1, size=(30, 18))
    ds = load_dataset("imagenet", "train", isolated / "inet", augment=True)
    assert len(ds) == 2
    torch.manual_seed(2)
    for i in range(2):
        x, y = ds[i]
        check_item(x, y, "imagenet")
    ds_plain = load_dataset("imagenet", "train", isolated / "inet", augment=False)
    check_item(*ds_plain[0], "imagenet")


def test_imagenet_env_dir(isolated, monkeypatch):
    write_imagefolder(isolated / "envinet", ["c"], 1, size=(8, 8))
    monkeypatch.setenv("IMAGENET_DIR", str(isolated / "envinet"))
    ds = load_dataset("imagenet", "test")
    assert len(ds) == 1


# --------------------------------------------------------------------------- missing / bad names


@pytest.mark.parametrize("name", ["cifar10", "imagenet32", "fashion_mnist", "imagenet",
                                  "mnist", "cifar100", "svhn"])
@pytest.mark.parametrize("split", ["train", "test"])
def test_missing_dataset_names_folder(isolated, name, split):
    tried = isolated / "nothing-here"
    with pytest.raises(UserError) as err:
        load_dataset(name, split, tried, download=False)
    msg = str(err.value)
    assert str(tried) in msg
    assert name in msg


def test_missing_dataset_without_root_names_default_folder(isolated):
    with pytest.raises(UserError) as err:
        load_dataset("cifar10", "test", download=False)
    assert "data_batch" in str(err.value) or "test_batch" in str(err.value)
    assert "in data;" in str(err.value)  # ./data is the only folder tried


def test_missing_fashion_mnist_names_debian_folder(isolated):
    with pytest.raises(UserError) as err:
        load_dataset("fashion_mnist", "test", download=False)
    assert str(isolated / "no-debian-fmnist") in str(err.value)


def test_unknown_dataset_names_field(isolated):
    with pytest.raises(UserError) as err:
        load_dataset("mnist_typo", "train")
    assert "dataset" in str(err.value)
    assert "mnist_typo" in str(err.value)
    with pytest.raises(UserError, match="dataset"):
        dataset_info("cifar1000")


def test_unknown_split_names_field(isolated):
    with pytest.raises(UserError) as err:
        load_dataset("synthetic", "validation")
    assert "split" in str(err.value)
    assert "validation" in str(err.value)


# --------------------------------------------------------------------------- synthetic, env


def test_synthetic_deterministic_and_splits_differ(isolated):
    a = load_dataset("synthetic", "train")
    b = load_dataset("synthetic", "train")
    t = load_dataset("synthetic", "test")
    assert len(a) == len(b) == 2048
    assert len(t) == 512
    for i in (0, 1, 100, 2047):
        xa, ya = a[i]
        xb, yb = b[i]
        check_item(xa, ya, "synthetic")
        assert torch.equal(xa, xb) and ya == yb
    check_item(*t[0], "synthetic")
    assert not torch.equal(a[0][0], t[0][0])
    train_stack = torch.stack([a[i][0] for i in range(64)])
    test_stack = torch.stack([t[i][0] for i in range(64)])
    assert not torch.equal(train_stack, test_stack)
    assert {a[i][1] for i in range(200)} == set(range(4))


def test_smoothadv_data_env_is_honoured(isolated, monkeypatch):
    written = write_cifar10(isolated / "envdata", per_batch=2, seed=14)
    monkeypatch.setenv("SMOOTHADV_DATA", str(isolated / "envdata"))
    ds = load_dataset("cifar10", "test")
    assert len(ds) == 2
    np.testing.assert_array_equal(ds[1][0].numpy(), expected_chw(written["test"][0], 1))

    fm = write_fashion_mnist(isolated / "envdata" / "fashion-mnist", 3, 2, seed=15)
    ds = load_dataset("fashion_mnist", "test")
    assert len(ds) == 2
    assert ds[1][1] == int(fm["test"][1][1])

    write_imagenet32(isolated / "envdata" / "Imagenet32", per_batch=1, seed=16)
    assert len(load_dataset("imagenet32", "test")) == 1


def test_data_root_wins_over_env(isolated, monkeypatch):
    write_cifar10(isolated / "env", per_batch=2, seed=17)
    chosen = write_cifar10(isolated / "arg", per_batch=3, seed=18)
    monkeypatch.setenv("SMOOTHADV_DATA", str(isolated / "env"))
    ds = load_dataset("cifar10", "test", isolated / "arg")
    assert len(ds) == 3
    np.testing.assert_array_equal(ds[0][0].numpy(), expected_chw(chosen["test"][0], 0))


def test_dot_data_folder_is_found(isolated):
    write_cifar10(isolated / "data", per_batch=2, seed=19)
    assert len(load_dataset("cifar10", "test")) == 2


def _isolate(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SMOOTHADV_DATA", raising=False)
    monkeypatch.setattr(trainer_datasets, "DEBIAN_FASHION_MNIST", tmp_path / "absent")


def test_download_fetches_into_the_first_folder_then_loads(monkeypatch, tmp_path):
    """--download hands the first candidate folder to torchvision, whose FashionMNIST leaves
    the .gz files in ROOT/FashionMNIST/raw; the real reader then loads them."""
    import torchvision.datasets

    _isolate(monkeypatch, tmp_path)
    fetched = []

    def fake_fashion_mnist(root, train, download):
        fetched.append(Path(root))
        write_fashion_mnist(Path(root) / "FashionMNIST" / "raw", n_train=4, n_test=3)

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", fake_fashion_mnist)
    root = tmp_path / "mine"
    test = load_dataset("fashion_mnist", "test", root, download=True)
    assert fetched == [root] and len(test) == 3
    load_dataset("fashion_mnist", "test", root, download=True)
    assert fetched == [root]  # present now: no second download


def test_failed_download_is_one_clear_error(monkeypatch, tmp_path):
    import torchvision.datasets

    _isolate(monkeypatch, tmp_path)

    def offline(root, train, download):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    with pytest.raises(UserError, match=r"cifar10.*download failed.*Network is unreachable"):
        load_dataset("cifar10", "test", tmp_path / "x", download=True)


# --------------------------------------------------------------------------- MNIST, CIFAR-100, SVHN


@pytest.mark.parametrize("name,shape,classes", [("mnist", (1, 28, 28), 10),
                                                ("cifar100", (3, 32, 32), 100),
                                                ("svhn", (3, 32, 32), 10)])
def test_new_builtin_datasets_facts(name, shape, classes):
    info = dataset_info(name)
    assert (info.input_shape, info.num_classes) == (shape, classes)
    assert len(info.mean) == len(info.std) == shape[0]
    assert all(0 < m < 1 for m in info.mean) and all(0 < s < 1 for s in info.std)


@pytest.mark.parametrize("split", ["train", "test"])
def test_mnist_exact_pixels_from_torchvision_layout(isolated, split):
    """MNIST's idx .gz files where torchvision's download leaves them (ROOT/MNIST/raw); a
    Fashion-MNIST copy (same file names) directly in ROOT is not taken for MNIST."""
    written = write_mnist(isolated / "root" / "MNIST" / "raw", n_train=5, n_test=4, seed=31)
    write_fashion_mnist(isolated / "root", n_train=2, n_test=2, seed=32)
    images, labels = written[split]
    ds = load_dataset("mnist", split, isolated / "root", download=False)
    check_items(ds, "mnist", labels, lambda i: images[i][None] / np.float32(255.0))


@pytest.mark.parametrize("split", ["train", "test"])
def test_cifar100_exact_pixels_and_fine_labels(isolated, split):
    written = write_cifar100(isolated / "root", n_train=4, n_test=3, seed=33)
    rows, labels = written[split]
    ds = load_dataset("cifar100", split, isolated / "root", augment=False)
    check_items(ds, "cifar100", labels, lambda i: expected_chw(rows, i))
    if split == "train":
        assert labels[:2] == [0, 99]  # the fine labels, not the 20 coarse ones
    x, _ = ds[0]
    assert [round(float(v) * 255) for v in x[:, MARK_ROW, MARK_COL]] == list(MARK_RGB)


def test_cifar100_train_augmentation_and_bad_label(isolated):
    write_cifar100(isolated, n_train=3, n_test=2, seed=34)
    assert load_dataset("cifar100", "train", isolated).transform is not None
    assert load_dataset("cifar100", "train", isolated, augment=False).transform is None
    path = isolated / "cifar-100-python" / "test"
    batch = pickle.loads(path.read_bytes(), encoding="bytes")
    batch[b"fine_labels"][1] = 100
    path.write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(UserError) as err:
        load_dataset("cifar100", "test", isolated)
    assert str(path) in str(err.value) and "0..99" in str(err.value)


@pytest.mark.parametrize("split", ["train", "test"])
def test_svhn_exact_pixels_and_digit_zero(isolated, split):
    written = write_svhn(isolated / "root", n_train=4, n_test=3, seed=35)
    images, digits = written[split]
    ds = load_dataset("svhn", split, isolated / "root", augment=False)
    check_items(ds, "svhn", digits,
                lambda i: images[i].transpose(2, 0, 1).astype(np.float32) / 255.0)
    assert [ds[0][1], ds[1][1]] == [0, 9]  # label 10 in the file is the digit 0
    x, _ = ds[0]
    assert [round(float(v) * 255) for v in x[:, MARK_ROW, MARK_COL]] == list(MARK_RGB)


def test_svhn_augmentation_crops_without_flipping(isolated):
    from torchvision.transforms import v2

    write_svhn(isolated, n_train=2, n_test=1, seed=36)
    tf = load_dataset("svhn", "train", isolated).transform
    assert isinstance(tf, v2.RandomCrop)  # no horizontal flip: a mirrored digit is no digit


def test_svhn_damaged_file_names_file(isolated):
    write_svhn(isolated, n_train=2, n_test=2, seed=37)
    bad = isolated / "test_32x32.mat"
    bad.write_bytes(bad.read_bytes()[:200])
    with pytest.raises(UserError) as err:
        load_dataset("svhn", "test", isolated)
    assert str(bad) in str(err.value) and len(str(err.value).splitlines()) == 1


def test_download_of_new_datasets_lands_where_they_are_read(monkeypatch, tmp_path):
    """--download hands the first folder to torchvision; fakes leave the files where the real
    classes do (MNIST/raw, cifar-100-python/, ROOT/{split}_32x32.mat) and the readers find
    them there."""
    import torchvision.datasets

    _isolate(monkeypatch, tmp_path)
    fetched = []

    def fake(name, write):
        def fetch(root, *args, **kwargs):
            fetched.append((name, Path(root)))
            write(Path(root))
        return fetch

    monkeypatch.setattr(torchvision.datasets, "MNIST",
                        fake("mnist", lambda r: write_mnist(r / "MNIST" / "raw", 3, 2)))
    monkeypatch.setattr(torchvision.datasets, "CIFAR100",
                        fake("cifar100", lambda r: write_cifar100(r, 3, 2)))
    monkeypatch.setattr(torchvision.datasets, "SVHN",
                        fake("svhn", lambda r: write_svhn(r, 3, 2)))
    root = tmp_path / "mine"
    for name in ("mnist", "cifar100", "svhn"):
        assert len(load_dataset(name, "test", root, download=True)) == 2
        assert len(load_dataset(name, "test", root, download=True)) == 2  # no second fetch
    assert fetched == [("mnist", root), ("cifar100", root), ("svhn", root)]


def test_train_and_certify_on_svhn_files_through_the_cli(isolated, capsys):
    """`smoothadv train` on tiny SVHN .mat files, then `smoothadv certify` of its checkpoint,
    both reading the dataset through the same loader."""
    import yaml
    from smoothadv.cli.main import main

    write_svhn(isolated / "svhn", n_train=24, n_test=6, seed=38)
    spec = isolated / "trial.yaml"
    spec.write_text(yaml.safe_dump({
        "dataset": "svhn", "data_root": str(isolated / "svhn"), "arch": "lenet",
        "method": "gaussian", "epochs": 1, "warmup_epochs": 0, "batch_size": 8, "lr": 0.01,
        "m_train": 1, "steps": 1, "device": "cpu"}))
    run = isolated / "run"
    assert main(["train", str(spec), "--out", str(run), "--no-progress"]) == 0
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    assert (ckpt["dataset"], ckpt["num_classes"]) == ("svhn", 10)
    out = isolated / "certify.tsv"
    assert main(["certify", str(run / "checkpoint.pt"), "--sigma", "0.25", "--n0", "4",
                 "--n", "16", "--batch", "16", "--data-root", str(isolated / "svhn"),
                 "--out", str(out), "--device", "cpu", "--no-progress"]) == 0
    import pandas as pd

    rows = pd.read_csv(out, sep="\t")
    expected = write_svhn(isolated / "again", 24, 6, seed=38)["test"][1]  # the same files
    assert rows["label"].tolist() == expected.tolist()
