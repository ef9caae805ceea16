"""Self-training: the pseudo-labelled file format, safe unpickling, pseudo-label, half-and-half
training with per-example loss weights, bit-exact resume, and the CLI flow end to end."""

from __future__ import annotations

import builtins
import json
import os
import pickle
import re
import subprocess

import numpy as np
import pytest
import torch
import yaml
from conftest import assert_resumed_equals_straight
from formats import write_cifar10
from smoothadv.cli.main import main
from smoothadv.common.errors import UserError
from smoothadv.common.layout import METRICS
from smoothadv.trainers import build_model, load_dataset, model_from_checkpoint
from smoothadv.trainers import train as train_module
from smoothadv.trainers.config import parse_trial_config
from smoothadv.trainers.data_formats import read_pickle_dict
from smoothadv.trainers.datasets import synthetic_arrays
from smoothadv.trainers.self_training import load_extra_data, pseudo_label, write_extra_data
from smoothadv.trainers.train import train_trial

SYNTH = {"dataset": "synthetic", "arch": "lenet", "sigma": 0.25, "epsilon": 0.25, "steps": 2,
         "m_train": 2, "warmup_epochs": 1, "batch_size": 20, "lr": 0.05, "train_subset": 60,
         "epoch_test_subset": 40, "device": "cpu"}


def _extra(n: int, value: int | None = None, label: int | None = None, seed: int = 0,
           shape=(16, 16, 1), classes: int = 4):
    rng = np.random.default_rng(seed)
    images = (np.full((n, *shape), value, np.uint8) if value is not None
              else rng.integers(0, 256, (n, *shape), dtype=np.uint8))
    labels = np.full(n, label) if label is not None else rng.integers(0, classes, n)
    return images, labels


# --------------------------------------------------------------------------- file format


def test_round_trip_keeps_images_and_labels(tmp_path):
    images, labels = _extra(7, seed=1)
    path = tmp_path / "extra.pkl"
    write_extra_data(path, images, labels)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp file left
    raw = read_pickle_dict(path)
    assert set(raw) == {"data", "extrapolated_targets"}
    data = load_extra_data(path, "synthetic")
    assert len(data) == 7
    np.testing.assert_array_equal(data.images, images)
    np.testing.assert_array_equal(data.labels, labels)
    x, y = data[3]
    assert x.shape == (1, 16, 16) and y == labels[3]
    assert torch.equal(x, torch.from_numpy(images[3]).permute(2, 0, 1).float() / 255)


def _dump(path, obj):
    path.write_bytes(pickle.dumps(obj, protocol=4))


@pytest.mark.parametrize("content,field", [
    ({"extrapolated_targets": [0]}, "'data'"),
    ({"data": np.zeros((1, 16, 16, 1), np.uint8)}, "'extrapolated_targets'"),
    ({"data": np.zeros((2, 16, 16, 1), np.float32), "extrapolated_targets": [0, 1]}, "'data'"),
    ({"data": np.zeros((2, 16, 16, 3), np.uint8), "extrapolated_targets": [0, 1]}, "'data'"),
    ({"data": np.zeros((2, 1, 16, 16), np.uint8), "extrapolated_targets": [0, 1]}, "'data'"),
    ({"data": np.zeros((0, 16, 16, 1), np.uint8), "extrapolated_targets": []}, "'data'"),
    ({"data": np.zeros((2, 16, 16, 1), np.uint8), "extrapolated_targets": [0]},
     "'extrapolated_targets'"),
    ({"data": np.zeros((2, 16, 16, 1), np.uint8), "extrapolated_targets": [0, 4]},
     "'extrapolated_targets'"),
    ({"data": np.zeros((2, 16, 16, 1), np.uint8), "extrapolated_targets": [0.5, 1.0]},
     "'extrapolated_targets'"),
    ({"data": np.zeros((2, 16, 16, 1), np.uint8), "extrapolated_targets": [[0], [1, 2]]},
     "'extrapolated_targets'"),
    ([1, 2], "pickled dict"),
])
def test_bad_extra_files_name_file_and_field(tmp_path, content, field):
    path = tmp_path / "bad.pkl"
    _dump(path, content)
    with pytest.raises(UserError) as info:
        load_extra_data(path, "synthetic")
    message = str(info.value)
    assert str(path) in message and field in message and "\n" not in message


def test_truncated_extra_file_names_file(tmp_path):
    path = tmp_path / "cut.pkl"
    write_extra_data(path, *_extra(4))
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(UserError, match="cut.pkl: cannot read pickle"):
        load_extra_data(path, "synthetic")


# --------------------------------------------------------------------------- safe unpickling


class _Payload:
    """Pickles as a call that creates ``marker`` (what a hostile file would do)."""

    def __init__(self, how: str, marker: str):
        self.how, self.marker = how, marker

    def __reduce__(self):
        if self.how == "os.system":
            return os.system, (f"touch {self.marker}",)
        if self.how == "exec":
            return builtins.exec, (f"open({self.marker!r}, 'w').close()",)
        return subprocess.call, (["touch", self.marker],)


@pytest.mark.parametrize("how", ["os.system", "exec", "subprocess"])
@pytest.mark.parametrize("target", ["extra_data", "cifar10"])
def test_code_in_a_pickle_is_refused_and_never_runs(tmp_path, how, target):
    marker = tmp_path / "pwned"
    evil = pickle.dumps({"data": _Payload(how, str(marker)), "extrapolated_targets": [0]},
                        protocol=2)
    pickle.loads(evil)  # the payload is real: plain pickle runs it
    assert marker.exists()
    marker.unlink()
    if target == "extra_data":
        path = tmp_path / "extra.pkl"
        path.write_bytes(evil)
        load = lambda: load_extra_data(path, "synthetic")  # noqa: E731
    else:
        write_cifar10(tmp_path, per_batch=2)
        path = tmp_path / "cifar-10-batches-py" / "test_batch"
        path.write_bytes(evil)
        load = lambda: load_dataset("cifar10", "test", tmp_path)  # noqa: E731
    with pytest.raises(UserError) as info:
        load()
    name = {"os.system": "system", "exec": "exec", "subprocess": "call"}[how]
    assert str(path) in str(info.value)  # refused by name (protocol 2 spells Python 2 modules)
    assert re.search(rf"refused to unpickle global \w+\.{name} ", str(info.value))
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_numpy_pickles_load_under_every_protocol_and_numpy_name(tmp_path, protocol):
    content = {b"data": np.arange(24, dtype=np.uint8).reshape(2, 3, 4, 1),
               "labels": [np.int64(3), 1], "mean": np.float32(0.5)}
    blob = pickle.dumps(content, protocol=protocol)
    blobs = [blob]
    if protocol == 2:  # the names numpy 1.x writes (text GLOBAL opcodes)
        blobs.append(blob.replace(b"numpy._core.", b"numpy.core."))
        assert blobs[1] != blob
    for i, data in enumerate(blobs):
        path = tmp_path / f"p{protocol}_{i}.pkl"
        path.write_bytes(data)
        loaded = read_pickle_dict(path)
        np.testing.assert_array_equal(loaded["data"], content[b"data"])
        assert loaded["labels"] == [3, 1] and loaded["mean"] == np.float32(0.5)


def test_codecs_encode_only_for_latin1(tmp_path):
    path = tmp_path / "codec.pkl"
    path.write_bytes(b"\x80\x02c_codecs\nencode\nX\x03\x00\x00\x00abcX\x04\x00\x00\x00zlib"
                     b"\x86R.")
    with pytest.raises(UserError, match="codec.pkl: cannot read pickle"):
        read_pickle_dict(path)


# --------------------------------------------------------------------------- pseudo-label


def test_pseudo_label_is_the_teachers_argmax(synthetic_checkpoint, tmp_path):
    out = tmp_path / "pseudo.pkl"
    labels = pseudo_label(synthetic_checkpoint, "synthetic:train", out, limit=300,
                          batch_size=64, progress=False)
    images, true = synthetic_arrays("train")
    teacher, _ = model_from_checkpoint(synthetic_checkpoint)
    x = torch.from_numpy(images[:300]).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        expected = teacher.eval()(x).argmax(1).numpy()
    np.testing.assert_array_equal(labels, expected)
    assert (labels == true[:300]).mean() > 0.9  # the teacher is ~100% right on clean images
    written = load_extra_data(out, "synthetic")
    np.testing.assert_array_equal(written.images, images[:300])
    np.testing.assert_array_equal(written.labels, labels)


def test_images_from_npy_and_from_a_carmon_pickle(synthetic_checkpoint, tmp_path):
    images, _ = _extra(10, seed=4)
    np.save(tmp_path / "u.npy", images)
    first = pseudo_label(synthetic_checkpoint, str(tmp_path / "u.npy"), tmp_path / "a.pkl",
                         progress=False)
    again = pseudo_label(synthetic_checkpoint, str(tmp_path / "a.pkl"), tmp_path / "b.pkl",
                         progress=False)
    np.testing.assert_array_equal(first, again)
    np.testing.assert_array_equal(load_extra_data(tmp_path / "b.pkl", "synthetic").images, images)


@pytest.mark.parametrize("spec,message", [
    ("nowhere.pkl", "no such file"),
    ("synthetic:valid", "unknown split"),
    ("imagenet:train", "imagenet"),  # the folder is missing (or is not held in memory)
    ("rgb.npy", "expected 16×16×1"),
    ("float.npy", "expected uint8"),
])
def test_bad_images_source_is_one_line_naming_it(synthetic_checkpoint, tmp_path, monkeypatch,
                                                 spec, message):
    monkeypatch.chdir(tmp_path)
    np.save("rgb.npy", np.zeros((2, 16, 16, 3), np.uint8))
    np.save("float.npy", np.zeros((2, 16, 16, 1), np.float32))
    with pytest.raises(UserError) as info:
        pseudo_label(synthetic_checkpoint, spec, tmp_path / "o.pkl", progress=False)
    assert spec in str(info.value) and message in str(info.value)
    assert "\n" not in str(info.value) and not (tmp_path / "o.pkl").exists()


# --------------------------------------------------------------------------- training


def test_extra_data_is_a_valid_key():
    c = parse_trial_config({**SYNTH, "extra_data": "x.pkl", "extra_weight": 0.0})
    assert c.extra_data == "x.pkl" and c.extra_weight == 0.0


def test_batches_are_half_labelled_half_pseudo_labelled(tmp_path, monkeypatch):
    """Every loader batch: 10 labelled + 10 extra images, interleaved, weights 1 / 0.3; the
    epoch is one pass over the 60 labelled images."""
    path = tmp_path / "extra.pkl"
    write_extra_data(path, *_extra(25, value=255, label=3))  # all-white: easy to tell apart
    seen = []
    real_train_batch = train_module.train_batch

    def spy(model, opt, x, y, config, eps, stats, w):
        seen.append((x, y, w))
        real_train_batch(model, opt, x, y, config, eps, stats, w)

    monkeypatch.setattr(train_module, "train_batch", spy)
    train_trial(parse_trial_config({**SYNTH, "extra_data": str(path), "extra_weight": 0.3,
                                    "epochs": 1}), tmp_path / "run", progress=False)
    assert len(seen) == 6  # 60 labelled images, 10 per batch
    images, labels = synthetic_arrays("train")
    labelled = []
    for x, y, w in seen:
        assert len(y) == 20
        white = (x == 1.0).flatten(1).all(1)
        assert white.tolist() == [False, True] * 10
        assert torch.equal(y[white], torch.full((10,), 3))
        assert torch.allclose(w, torch.tensor([1.0, 0.3]).repeat(10))
        labelled += [(xi, int(yi)) for xi, yi in zip(x[~white], y[~white], strict=True)]
    # the labelled halves are exactly the 60 training images, each once, with true labels
    flat = torch.from_numpy(images[:60]).permute(0, 3, 1, 2).float() / 255
    found = sorted(int(torch.nonzero((flat == xi).flatten(1).all(1))[0]) for xi, _ in labelled)
    assert found == list(range(60))
    assert all(int(labels[int(torch.nonzero((flat == xi).flatten(1).all(1))[0])]) == yi
               for xi, yi in labelled)


def _step_copy(weights, x, y, lr, **config):
    """Parameters after train_batch on (x, y, weights) from _REF's weights with SGD at ``lr``."""
    model = build_model("lenet", "synthetic")
    model.load_state_dict(_REF.state_dict())
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    torch.manual_seed(0)
    c = parse_trial_config({**SYNTH, **config})
    train_module.train_batch(model, opt, x, y, c, 0.25, {"loss": 0, "correct": 0, "samples": 0},
                             weights)
    return torch.cat([p.detach().flatten() for p in model.parameters()])


torch.manual_seed(5)
_REF = build_model("lenet", "synthetic")


@pytest.mark.parametrize("multi", [False, True])
def test_extra_examples_with_weight_zero_have_no_influence(multi):
    """SmoothAdv-PGD on a mixed batch: with extra_weight = 0, swapping the pseudo-labelled half
    for other images and labels leaves the update unchanged; with weight 1 it changes it."""
    g = torch.Generator().manual_seed(0)
    xl, yl = torch.rand(8, 1, 16, 16, generator=g), torch.randint(4, (8,), generator=g)
    mixes = []
    for _ in range(2):
        xe, ye = torch.rand(8, 1, 16, 16, generator=g), torch.randint(4, (8,), generator=g)
        mixes.append((torch.stack([xl, xe], 1).flatten(0, 1), torch.stack([yl, ye], 1).flatten()))
    for weight, same in ((0.0, True), (1.0, False)):
        w = torch.tensor([1.0, weight]).repeat(8)
        a, b = (_step_copy(w, x, y, 0.1, multi_noise=multi) for x, y in mixes)
        assert torch.equal(a, b) is same


def test_weighted_loss_is_normalized_by_the_whole_batch():
    """(1/n) Σ w_i CE_i: with weights 0 on half the batch the step equals the labelled-only step
    at half the learning rate; with weights 1 it equals the unweighted step."""
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(12, 1, 16, 16, generator=g), torch.randint(4, (12,), generator=g)
    labelled = torch.arange(12) % 2 == 0
    gaussian = {"method": "gaussian", "m_train": 1}
    zero = _step_copy(labelled.float(), x, y, 0.2, **gaussian)
    torch.manual_seed(0)
    noise = 0.25 * torch.randn(12, 1, 1, 16, 16)  # the noise train_batch draws for the batch
    only = build_model("lenet", "synthetic")
    only.load_state_dict(_REF.state_dict())
    opt = torch.optim.SGD(only.parameters(), lr=0.1)
    loss = torch.nn.functional.cross_entropy(only(x[labelled] + noise[labelled, 0]), y[labelled])
    loss.backward()
    opt.step()
    expected = torch.cat([p.detach().flatten() for p in only.parameters()])
    assert torch.allclose(zero, expected, atol=1e-6)
    ones = _step_copy(torch.ones(12), x, y, 0.2, **gaussian)
    plain = _step_copy(None, x, y, 0.2, **gaussian)
    assert torch.allclose(ones, plain, atol=1e-6) and not torch.equal(ones, zero)


def test_resume_with_extra_data_is_bit_exact_and_augments_both_halves(tmp_path, monkeypatch):
    """Gaussian augmentation on CIFAR-10-format files, whose crop + flip draws randomness for
    both halves (the attacks' determinism is covered by test_train.py)."""
    write_cifar10(tmp_path / "data", per_batch=4, seed=3)
    path = tmp_path / "extra.pkl"
    write_extra_data(path, *_extra(30, seed=2, shape=(32, 32, 3), classes=10))
    loaded = []
    real_load = train_module.load_extra_data
    monkeypatch.setattr(train_module, "load_extra_data",
                        lambda *a: loaded.append(real_load(*a)) or loaded[-1])
    c = parse_trial_config({**SYNTH, "dataset": "cifar10", "data_root": str(tmp_path / "data"),
                            "train_subset": None, "epoch_test_subset": None, "batch_size": 8,
                            "method": "gaussian", "m_train": 1,
                            "extra_data": str(path), "extra_weight": 0.5, "epochs": 3})
    train_trial(c, tmp_path / "straight", progress=False)
    train_trial(parse_trial_config({**c.to_dict(), "epochs": 1}), tmp_path / "resumed",
                progress=False)
    first_epoch = (tmp_path / "resumed" / METRICS).read_bytes()
    train_trial(c, tmp_path / "resumed", progress=False)
    assert_resumed_equals_straight(tmp_path / "straight", tmp_path / "resumed", first_epoch, 3)
    # the extra half carries the labelled set's crop + flip augmentation
    labelled = load_dataset("cifar10", "train", tmp_path / "data")
    assert loaded[0].transform is not None
    assert repr(loaded[0].transform) == repr(labelled.transform)


# --------------------------------------------------------------------------- CLI flow


def test_cli_pseudo_label_then_train(synthetic_checkpoint, tmp_path, capsys):
    out = tmp_path / "pseudo.pkl"
    assert main(["pseudo-label", str(synthetic_checkpoint), "--images",
                 "synthetic:train", "--limit", "200", "--out", str(out), "--no-progress"]) == 0
    line = capsys.readouterr().out.strip()
    counts = [int(part.split(":")[1]) for part in line.split("label counts ")[1].split()]
    assert line.startswith(f"{out}: 200 images, label counts 0:") and sum(counts) == 200
    config = tmp_path / "trial.yaml"
    config.write_text(yaml.safe_dump({**SYNTH, "epochs": 1}))
    assert main(["train", str(config), "--set", f"extra_data={out}", "--set",
                 "extra_weight=0.5", "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    metrics = [json.loads(ln) for ln in (tmp_path / "run" / METRICS).open()]
    assert [m["epoch"] for m in metrics] == [0]
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["extra_data"] == str(out)
    capsys.readouterr()
    assert main(["pseudo-label", str(synthetic_checkpoint), "--images",
                 "nope.npy", "--out", str(tmp_path / "x.pkl"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("smoothadv: error: --images nope.npy") and "\n" not in err
