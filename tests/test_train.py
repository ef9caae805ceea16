"""The training loop: resume equals uninterrupted, noise reuse, training helps certification."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from conftest import assert_resumed_equals_straight
from smoothadv.certify.runner import Sampling, run_smoothing, select_indices
from smoothadv.common.layout import CHECKPOINT, METRICS
from smoothadv.trainers import build_model, load_dataset, model_from_checkpoint, resume, step
from smoothadv.trainers import train as train_module
from smoothadv.trainers.config import parse_trial_config
from smoothadv.trainers.train import train_trial

BASE = {"dataset": "synthetic", "arch": "lenet", "sigma": 0.25, "epsilon": 0.25, "steps": 2,
        "m_train": 2, "warmup_epochs": 2, "batch_size": 50, "lr": 0.05, "lr_step": 2,
        "train_subset": 300, "epoch_test_subset": 100, "device": "cpu"}


def config(**overrides):
    return parse_trial_config({**BASE, **overrides})


def _augmented_synthetic(monkeypatch):
    """The synthetic training set with CIFAR's crop and flip (it has none of its own)."""
    from smoothadv.trainers.datasets import ArrayDataset, _small_image_transform, synthetic_arrays

    load = train_module.load_dataset
    monkeypatch.setattr(train_module, "load_dataset", lambda name, split, *a, **k: (
        ArrayDataset(*synthetic_arrays("train"), _small_image_transform(16, train=True))
        if split == "train" else load(name, split, *a, **k)))


@pytest.mark.parametrize("method,attack,multi,amp,data", [
    ("smoothadv", "pgd", False, False, "augmented, on the device"),
    ("smoothadv", "ddn", True, False, "on the device"),
    ("gaussian", "pgd", False, False, "loader"),
    ("smoothadv", "pgd", True, True, "on the device")])
def test_resume_from_epoch_checkpoint_equals_uninterrupted(tmp_path, monkeypatch, method, attack,
                                                           multi, amp, data):
    """Also with ``amp`` (bfloat16 autocast), which the CPU honours too; with the training
    images on the device (``data_on_device``, cropped and flipped there) or in the loader."""
    if data.startswith("augmented"):
        _augmented_synthetic(monkeypatch)
    c = config(method=method, attack=attack, multi_noise=multi, epochs=3, amp=amp,
               data_on_device=data != "loader")
    train_trial(c, tmp_path / "straight", progress=False)
    interrupted = parse_trial_config({**c.to_dict(), "epochs": 1})
    train_trial(interrupted, tmp_path / "resumed", progress=False)
    first_epoch = (tmp_path / "resumed" / METRICS).read_bytes()
    train_trial(c, tmp_path / "resumed", progress=False)  # continues at epoch 1
    assert_resumed_equals_straight(tmp_path / "straight", tmp_path / "resumed", first_epoch, 3)
    lines = [json.loads(ln) for ln in (tmp_path / "resumed" / METRICS).open()]
    assert [m["epoch"] for m in lines] == [0, 1, 2]
    assert all(m["data_on_device"] == (data != "loader") for m in lines)


class Died(BaseException):
    """The process dying at a given point (BaseException: nothing on the way catches it)."""


@pytest.mark.parametrize("dies", ["before", "after"])
def test_dying_beside_an_epochs_checkpoint_loses_no_metrics_line(tmp_path, monkeypatch, dies):
    """The process dies just before or just after an epoch's checkpoint is saved: the re-run
    ends with one metrics line per epoch (a line past the checkpoint is trimmed and its epoch
    trained again; a checkpoint is never ahead of the lines)."""
    c = config(method="gaussian", epochs=2)
    save = train_module.save_checkpoint

    def dying_save(path, *args, epoch, **kwargs):
        if epoch == 2 and dies == "before":
            raise Died
        save(path, *args, epoch=epoch, **kwargs)
        if epoch == 2:
            raise Died

    monkeypatch.setattr(train_module, "save_checkpoint", dying_save)
    with pytest.raises(Died):
        train_trial(c, tmp_path, progress=False)
    monkeypatch.setattr(train_module, "save_checkpoint", save)
    train_trial(c, tmp_path, progress=False)
    assert [json.loads(ln)["epoch"] for ln in (tmp_path / METRICS).open()] == [0, 1]
    assert torch.load(tmp_path / CHECKPOINT, weights_only=True)["epoch"] == 2


def test_checkpoints_hold_no_generator_state_and_resume_needs_none(tmp_path):
    """Every epoch reseeds from (seed, epoch), so a checkpoint stores no generator state: a
    resume in a process whose generators are anywhere ends bit for bit where the
    uninterrupted run does."""
    import random

    import numpy as np

    c = config(epochs=2)
    train_trial(c, tmp_path / "straight", progress=False)
    train_trial(parse_trial_config({**c.to_dict(), "epochs": 1}), tmp_path / "resumed",
                progress=False)
    path = tmp_path / "resumed" / CHECKPOINT
    assert "rng" not in torch.load(path, weights_only=True)
    torch.manual_seed(999)
    np.random.seed(999)
    random.seed(999)
    train_trial(c, tmp_path / "resumed", progress=False)
    a = torch.load(tmp_path / "straight" / CHECKPOINT, weights_only=True)
    b = torch.load(path, weights_only=True)
    assert b["epoch"] == 2 and "rng" not in b
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key


def test_epsilon_warmup_is_linear():
    c = config(epsilon=1.0, warmup_epochs=4)
    assert [step.attack_epsilon(c, e) for e in range(6)] == [0.25, 0.5, 0.75, 1, 1, 1]


def test_the_update_uses_the_attacks_noise(monkeypatch):
    """Pseudocode 1: x̂ + δ_i in the update uses the δ_i the attack was given."""
    seen = {}

    def spy_attack(model, x, y, noise, config, epsilon):
        seen["noise"] = noise.clone()
        return x + 0.01

    def spy_step(model, optimizer, inputs, targets, stats):
        seen["inputs"] = inputs.clone()

    monkeypatch.setattr(step, "attack_chunk", spy_attack)
    monkeypatch.setattr(step, "_sgd_step", spy_step)
    x, y = torch.rand(5, 1, 16, 16), torch.randint(4, (5,))
    model = build_model("lenet", "synthetic")
    step.train_batch(model, None, x, y, config(m_train=1, multi_noise=True), 0.25, {})
    assert torch.allclose(seen["inputs"], x + 0.01 + seen["noise"][:, 0])


def test_batch_not_divisible_by_m_trains_on_every_image(monkeypatch):
    sizes = []
    monkeypatch.setattr(step, "_sgd_step",
                        lambda model, opt, inputs, targets, stats: sizes.append(len(targets)))
    model = build_model("lenet", "synthetic")
    x, y = torch.rand(7, 1, 16, 16), torch.randint(4, (7,))
    step.train_batch(model, None, x, y, config(m_train=3, multi_noise=False), 0.1, {})
    assert sizes == [7]  # one step on all 7 images
    sizes.clear()
    step.train_batch(model, None, x, y, config(m_train=3, multi_noise=True), 0.1, {})
    assert sizes == [9, 6, 6]  # chunks of 3, 2, 2 images × 3 noisy copies each


def test_short_smoothadv_training_raises_certified_accuracy(tmp_path):
    c = config(epochs=2, train_subset=600)
    train_trial(c, tmp_path / "run", progress=False)
    trained, _ = model_from_checkpoint(tmp_path / "run" / CHECKPOINT)
    test = load_dataset("synthetic", "test")
    indices = select_indices(len(test), skip=8)
    sampling = Sampling(sigma=0.25, n=200, alpha=0.01, n0=20)
    accuracy = {}
    for name, model in (("trained", trained), ("untrained", build_model("lenet", "synthetic"))):
        run_smoothing(model, 4, test, indices, sampling, tmp_path / f"{name}.tsv", progress=False)
        frame = pd.read_csv(tmp_path / f"{name}.tsv", sep="\t")
        accuracy[name] = (frame["correct"] & (frame["radius"] >= 0.25)).mean()
    assert accuracy["trained"] > 0.6 > accuracy["untrained"] + 0.2


def test_fine_tuning_keeps_the_body_and_replaces_the_head(tmp_path):
    """ImageNet-32 → CIFAR-10 (Table 2): body weights from the checkpoint, a fresh 10-way head,
    CIFAR-10's normalization."""
    from smoothadv.common.errors import UserError
    from smoothadv.trainers import save_checkpoint

    pretrained = build_model("cifar_resnet20", "imagenet32")
    path = tmp_path / "pre.pt"
    save_checkpoint(path, pretrained, arch="cifar_resnet20", dataset="imagenet32")
    c = parse_trial_config({"dataset": "cifar10", "arch": "cifar_resnet20",
                            "init_from": str(path), "reinit_head": True})
    model = resume.initial_model(c, torch.device("cpu"))
    assert model[1].fc.out_features == 10
    assert torch.equal(model[1].conv1.weight, pretrained[1].conv1.weight)
    assert torch.allclose(model[0].mean.flatten(), torch.tensor([0.4914, 0.4822, 0.4465]))
    # ImageNet-32 is normalized with CIFAR-10's statistics (the SmoothAdv reference), and the
    # fine-tuned model keeps the pre-trained input layer: nothing the body learned shifts.
    for buffer in ("mean", "std"):
        assert torch.equal(getattr(model[0], buffer), getattr(pretrained[0], buffer))
    other = build_model("cifar_resnet20", "imagenet")[0]  # an older ImageNet-statistics model
    pretrained[0] = other
    save_checkpoint(path, pretrained, arch="cifar_resnet20", dataset="imagenet32")
    kept = resume.initial_model(c, torch.device("cpu"))[0]
    assert torch.equal(kept.mean, other.mean) and torch.equal(kept.std, other.std)
    with pytest.raises(UserError, match="init_from.*reinit_head"):
        resume.initial_model(parse_trial_config({**c.to_dict(), "reinit_head": False}),
                             torch.device("cpu"))


def test_a_rerun_with_other_model_settings_is_refused_and_writes_nothing(tmp_path, capsys):
    """A run folder holds one model: `smoothadv train` into a folder trained with σ = 0.25 but
    now σ = 0.5 is one error line naming the key (exit 2), checkpoint and config untouched;
    more epochs (a key that does not change the model) resume."""
    import yaml
    from smoothadv.cli.main import main

    spec = tmp_path / "trial.yaml"
    spec.write_text(yaml.safe_dump({**BASE, "epochs": 1, "train_subset": 100}))
    run = tmp_path / "run"
    assert main(["train", str(spec), "--out", str(run), "--no-progress"]) == 0
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    capsys.readouterr()
    for override in ("sigma=0.5", "attack=ddn", "certify.n=50"):
        assert main(["train", str(spec), "--out", str(run), "--set", override,
                     "--no-progress"]) == 2
        err = capsys.readouterr().err.strip()
        key = override.partition("=")[0].partition(".")[0]
        assert len(err.splitlines()) == 1 and f"config.yaml: {key} is" in err, err
        assert {p.name: p.read_bytes() for p in run.iterdir()} == before
    # certify.batch_size is a resumable change (trainers.resume.RESUMABLE_CHANGES): it only
    # groups the noisy samples into forward passes
    recorded = yaml.safe_load((run / "config.yaml").read_text())
    assert recorded["certify"]["batch_size"] is None
    recorded["certify"]["batch_size"] = 400
    (run / "config.yaml").write_text(yaml.safe_dump(recorded))
    assert main(["train", str(spec), "--out", str(run), "--set", "epochs=2",
                 "--no-progress"]) == 0
    assert [json.loads(ln)["epoch"] for ln in (run / METRICS).open()] == [0, 1]
    assert (run / METRICS).read_bytes().startswith(before[METRICS])  # epoch 0 not retrained


@pytest.mark.parametrize("drop", ["amp", "certify.sequential"])
def test_a_run_record_lacking_a_key_is_refused_in_one_line(tmp_path, drop):
    """record_run writes every key, so a record without one is not read as its default."""
    import yaml
    from smoothadv.common.errors import UserError

    c = config(epochs=1)
    resume.record_run(c, tmp_path, rank=0)
    resume.check_same_run(c, tmp_path)  # the record as written: the same run
    recorded = yaml.safe_load((tmp_path / "config.yaml").read_text())
    block, _, key = drop.rpartition(".")
    del (recorded[block] if block else recorded)[key]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(recorded))
    with pytest.raises(UserError) as refusal:
        resume.check_same_run(c, tmp_path)
    assert str(refusal.value) == (f"{tmp_path / 'config.yaml'}: cannot read the run's recorded "
                                  f"config (it has no {drop})")


def test_a_checkpoint_of_another_format_version_is_never_skipped_over(tmp_path):
    """A readable previous checkpoint beside it does not hide a newest checkpoint of another
    format version: a wrong folder, not a damaged file."""
    from smoothadv.trainers.checkpoint import CheckpointMismatch, save_checkpoint

    path, model = tmp_path / CHECKPOINT, build_model("lenet", "synthetic")
    for epoch in (1, 2):
        save_checkpoint(path, model, arch="lenet", dataset="synthetic", epoch=epoch,
                        keep_previous=True)
    payload = torch.load(path, weights_only=True)
    payload["format_version"] = 2
    torch.save(payload, path)
    with pytest.raises(CheckpointMismatch) as refusal:
        resume.resume_point(path, config(), torch.device("cpu"), say=None)
    assert str(refusal.value) == f"{path}: format_version 2, this smoothadv reads 1"


@pytest.mark.parametrize("quantize", [True, False])
def test_the_ddn_quantize_key_reaches_the_attack(quantize):
    torch.manual_seed(0)
    model = build_model("lenet", "synthetic")
    x = torch.randint(0, 256, (4, 1, 16, 16)).float() / 255
    y = torch.randint(4, (4,))
    c = config(attack="ddn", ddn_quantize=quantize, steps=4)
    noise = 0.25 * torch.randn((4, 2, 1, 16, 16))
    x_hat = step.attack_chunk(model, x, y, noise, c, 0.5)
    on_grid = torch.allclose(x_hat * 255, (x_hat * 255).round(), atol=1e-3)
    assert on_grid == quantize


@pytest.mark.parametrize("within", [False, True])
def test_the_ddn_within_epsilon_key_reaches_the_attack(within):
    """Off (the reference's final rounding) the output may leave the ε-ball by a fraction of a
    level; on, it never does."""
    torch.manual_seed(0)
    model = build_model("lenet", "synthetic")
    x = torch.randint(0, 256, (16, 1, 16, 16)).float() / 255
    y = torch.randint(4, (16,))
    noise = 0.25 * torch.randn((16, 2, 1, 16, 16))
    c = config(attack="ddn", ddn_within_epsilon=within, steps=2)
    norms = (step.attack_chunk(model, x, y, noise, c, 0.25) - x).flatten(1).norm(dim=1)
    assert (norms > 0.25 + 1e-6).any() != within
