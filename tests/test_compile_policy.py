"""When compilation is the default (issue 25): certification compiles when the model is large
enough (trainers.compiled.MIN_SAMPLE_FLOPS) and the run's forward passes reach
CERTIFY_MIN_FLOPS, a resumed results file keeps the choice it recorded, training compiles by
model size and trial length; an explicit choice always wins. The FLOP counts are
torch.utils.flop_counter's, checked against closed forms."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from smoothadv.certify import runner
from smoothadv.certify.runner import Sampling, run_smoothing
from smoothadv.common.layout import meta_path
from smoothadv.trainers import build_model, compiled
from smoothadv.trainers.compiled import (
    CERTIFY_MIN_FLOPS,
    TRAIN_MIN_FLOPS,
    certification_repays_compiling,
    forward_flops,
    training_repays_compiling,
)
from torch import nn

IN, OUT = 48, 5  # a linear classifier on 3×4×4 images: 2·48·5 = 480 FLOPs a sample
CPU = torch.device("cpu")


def linear() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(IN, OUT)).eval()


def images(count: int = 3) -> list[tuple[torch.Tensor, int]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.rand(3, 4, 4, generator=g), i % OUT) for i in range(count)]


def test_forward_flops_are_the_closed_form():
    assert forward_flops(linear(), torch.rand(3, 4, 4)) == 2 * IN * OUT
    conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)  # 2·Cout·H·W·Cin·k²
    assert forward_flops(conv, torch.rand(3, 6, 6)) == 2 * 8 * 36 * 3 * 9


def test_certification_compiles_from_the_thresholds_on(monkeypatch):
    # ResNet-20 on CIFAR-10: one image at n = 100,000 repays it, a test's few hundred do not
    net = build_model("cifar_resnet20", "cifar10")
    image = torch.rand(3, 32, 32)
    assert certification_repays_compiling(net, image, 100_100, CPU)
    assert not certification_repays_compiling(net, image, 4 * 200, CPU)
    assert not certification_repays_compiling(net, image, 10**9, torch.device("meta"))
    # LeNet never does, however long the run: compiled, it is no faster
    lenet = build_model("lenet", "fashion_mnist")
    assert not certification_repays_compiling(lenet, torch.rand(1, 28, 28), 10**9, CPU)
    # the run threshold's edge, on a linear model counted as large enough
    monkeypatch.setattr(compiled, "MIN_SAMPLE_FLOPS", 0)
    x = torch.rand(3, 4, 4)
    at = int(CERTIFY_MIN_FLOPS["cpu"] // (2 * IN * OUT)) + 1  # samples that reach it
    assert certification_repays_compiling(linear(), x, at, CPU)
    assert not certification_repays_compiling(linear(), x, at - 2, CPU)


def test_training_compiles_by_model_size_and_trial_length():
    resnet, lenet = build_model("cifar_resnet20", "cifar10"), build_model("lenet",
                                                                          "fashion_mnist")
    # a paper-like trial: 50,000 images × (m·T attack + 1 update) passes × 150 epochs
    paper = 50_000 * (4 * 2 + 1) * 150
    assert training_repays_compiling(resnet, torch.rand(3, 32, 32), paper, CPU)
    assert not training_repays_compiling(lenet, torch.rand(1, 28, 28), paper, CPU)  # too small
    assert not training_repays_compiling(resnet, torch.rand(3, 32, 32), 256 * 9 * 2, CPU)
    assert TRAIN_MIN_FLOPS["cpu"] < TRAIN_MIN_FLOPS["cuda"]


@pytest.fixture
def fake_compiler(monkeypatch) -> list[int]:
    """compile_classifier replaced by one that only records its call (the policy is what is
    tested here; tests/test_kernels.py compiles for real)."""
    calls: list[int] = []
    monkeypatch.setattr(compiled, "MIN_SAMPLE_FLOPS", 0)  # the linear model counts as large

    def compile_classifier(model, example, **_):
        calls.append(len(example))
        return model, True

    monkeypatch.setattr(runner, "compile_classifier", compile_classifier)
    return calls


def predict(out, count: int = 3, **kwargs):
    return run_smoothing(linear(), OUT, images(), range(count),
                         Sampling(sigma=0.25, n=100, alpha=0.01), out, batch_size=100,
                         progress=False, **kwargs)


def test_a_short_run_stays_eager_and_a_long_one_compiles_by_default(tmp_path, fake_compiler,
                                                                   monkeypatch):
    predict(tmp_path / "short.tsv")
    assert fake_compiler == []
    assert json.loads(meta_path(tmp_path / "short.tsv").read_text())["compiled"] is False
    # the same run counted as long: 3 images × 100 samples × 480 FLOPs reach the threshold
    monkeypatch.setitem(compiled.CERTIFY_MIN_FLOPS, "cpu", 3 * 100 * 2 * IN * OUT)
    predict(tmp_path / "long.tsv")
    assert fake_compiler == [100]
    assert json.loads(meta_path(tmp_path / "long.tsv").read_text())["compiled"] is True
    predict(tmp_path / "asked.tsv", compile=False)  # an explicit choice wins
    assert fake_compiler == [100]


def test_a_resumed_file_keeps_the_choice_it_recorded(tmp_path, fake_compiler, monkeypatch):
    out = tmp_path / "p.tsv"
    predict(out, count=1)  # one image: eager, recorded so
    monkeypatch.setitem(compiled.CERTIFY_MIN_FLOPS, "cpu", 2 * 100 * 2 * IN * OUT)
    predict(out, count=3)  # three would compile from scratch; resumed, they stay eager
    assert fake_compiler == []
    assert len(pd.read_csv(out, sep="\t")) == 3
    assert json.loads(meta_path(out).read_text())["compiled"] is False


def test_a_trial_compiles_by_default_only_when_it_repays(tmp_path):
    from smoothadv.trainers.config import parse_trial_config
    from smoothadv.trainers.train import compiles, train_trial

    def config(**values):
        return parse_trial_config({"dataset": "cifar10", "arch": "cifar_resnet20", "sigma": 0.25,
                                   "epsilon": 0.5, "steps": 2, "m_train": 4, **values})

    net, image = build_model("cifar_resnet20", "cifar10"), torch.rand(3, 32, 32)
    assert compiles(config(epochs=150), net, image, 50_000, CPU)  # the paper's trial
    assert not compiles(config(epochs=150, compile=False), net, image, 50_000, CPU)
    assert not compiles(config(epochs=2), net, image, 512, CPU)  # too short to repay it
    assert compiles(config(epochs=2, compile=True), net, image, 512, CPU)
    # a tiny trial trains eagerly and its metrics say so
    tiny = parse_trial_config({"dataset": "synthetic", "arch": "lenet", "sigma": 0.25,
                               "epochs": 1, "batch_size": 32, "train_subset": 64,
                               "epoch_test_subset": 16, "method": "gaussian", "device": "cpu"})
    assert train_trial(tiny, tmp_path / "tiny", progress=False)["compiled"] is False
