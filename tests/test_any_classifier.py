"""Any base classifier: modules without parameters certify, predict and are attacked.

The device comes from the input (or an explicit argument), never from the model's parameters.
A fixed linear rule whose weight is a plain tensor attribute, and the same rule as a wrapped
function, must give exactly the rows of the equivalent module with parameters (conftest's
LinearBinary), seed for seed.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pandas as pd
import pytest
import torch
from conftest import LinearBinary
from smoothadv.certify import Smooth
from smoothadv.certify.attack import AttackSettings, run_attack
from smoothadv.certify.runner import Sampling, run_smoothing
from torch import nn

SHAPE = (1, 2, 4)
SIGMA = 0.25


class FixedLinear(nn.Module):
    """f(x) = [−z, z] with z = w·x + b; ``w`` a plain tensor attribute, so no parameters."""

    def __init__(self, w: torch.Tensor, b: float):
        super().__init__()
        self.w, self.b = w.flatten() / w.norm(), b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = (x.flatten(1) @ self.w + self.b).unsqueeze(1)
        return torch.cat([-z, z], dim=1)


class Wrapped(nn.Module):
    """A plain function as a module."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


def rules() -> dict[str, nn.Module]:
    w, b = torch.ones(SHAPE), -math.sqrt(2)
    fixed = FixedLinear(w, b)
    return {"with_parameters": LinearBinary(w, b), "plain_tensor": fixed,
            "lambda": Wrapped(lambda x: fixed(x))}


def images() -> list[tuple[torch.Tensor, int]]:
    """Points at signed margins −0.3 … 0.3 from the hyperplane, labelled by their side."""
    margins = [-0.3, -0.1, 0.05, 0.2, 0.3]
    return [(0.5 + d * torch.ones(SHAPE) / math.sqrt(8), int(d > 0)) for d in margins]


@pytest.mark.parametrize("device", [None, "cpu"])
def test_smooth_certifies_and_predicts_a_parameter_free_classifier(device):
    models = rules()
    assert not list(models["plain_tensor"].parameters())
    assert not list(models["lambda"].parameters())
    batch = torch.stack([x for x, _ in images()])
    for model in models.values():
        torch.testing.assert_close(model(batch), models["with_parameters"](batch), rtol=0,
                                   atol=1e-6)
    results = {}
    for name, model in models.items():
        smooth = Smooth(model, 2, SIGMA, generator=torch.Generator().manual_seed(0), device=device)
        x = images()[3][0]
        results[name] = (smooth.certify(x, 50, 500, 0.01, 128), smooth.predict(x, 500, 0.01, 128))
    assert results["plain_tensor"] == results["lambda"] == results["with_parameters"]
    assert results["lambda"][0][0] == 1  # certified the right class, with a radius
    assert results["lambda"][0][1] > 0


@pytest.mark.parametrize("certifying", [True, False])
def test_run_smoothing_rows_equal_those_of_the_module_with_parameters(tmp_path, certifying):
    sampling = Sampling(sigma=SIGMA, n=300, alpha=0.01, n0=30 if certifying else None, seed=5)
    rows = {}
    for name, model in rules().items():
        out = tmp_path / f"{name}.tsv"
        run_smoothing(model, 2, images(), range(5), sampling, out, batch_size=64, progress=False)
        rows[name] = pd.read_csv(out, sep="\t").drop(columns="time")
    pd.testing.assert_frame_equal(rows["plain_tensor"], rows["with_parameters"])
    pd.testing.assert_frame_equal(rows["lambda"], rows["with_parameters"])
    assert rows["lambda"]["correct"].sum() >= 3


def test_run_attack_rows_equal_those_of_the_module_with_parameters(tmp_path):
    settings = AttackSettings(sigma=SIGMA, epsilons=(0.0, 0.2), steps=5, m_test=8, n=300,
                              alpha=0.01, seed=1)
    rows = {}
    for name, model in rules().items():
        out = tmp_path / f"{name}.tsv"
        run_attack(model, 2, images(), range(5), settings, out, batch_size=64, progress=False,
                   device="cpu")
        rows[name] = pd.read_csv(out, sep="\t").drop(columns="time")
    pd.testing.assert_frame_equal(rows["plain_tensor"], rows["with_parameters"])
    pd.testing.assert_frame_equal(rows["lambda"], rows["with_parameters"])
    # the attack moved points across the boundary: fewer right at ε = 0.2 than at 0
    correct = rows["lambda"].groupby("epsilon")["correct"].sum()
    assert correct[0.2] < correct[0.0]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_parameter_free_classifier_runs_on_the_given_device(tmp_path):
    """Images on the CPU, the rule's weight on the GPU: ``device`` says where to evaluate."""
    model = FixedLinear(torch.ones(SHAPE, device="cuda"), -math.sqrt(2))
    sampling = Sampling(sigma=SIGMA, n=300, alpha=0.01, n0=30)
    run_smoothing(model, 2, images(), range(5), sampling, tmp_path / "c.tsv", progress=False,
                  device="cuda")
    settings = AttackSettings(sigma=SIGMA, epsilons=(0.0,), steps=2, m_test=4, n=300, alpha=0.01)
    run_attack(model, 2, images(), range(5), settings, tmp_path / "a.tsv", progress=False,
               device="cuda")
    for name in ("c.tsv", "a.tsv"):
        assert pd.read_csv(tmp_path / name, sep="\t")["correct"].sum() >= 3
