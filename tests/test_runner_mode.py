"""The resumable runner (certify.runner.run_resumable) under CERTIFY, PREDICT and the attack:
the model is evaluated in eval mode and gets its own train/eval mode back afterwards, also when
the evaluation raises or the output file is refused."""

from __future__ import annotations

import pytest
import torch
from smoothadv.certify.attack import AttackSettings, run_attack
from smoothadv.certify.runner import Sampling, run_smoothing
from smoothadv.common.errors import UserError
from torch import nn

SHAPE = (1, 2, 4)


class Recording(nn.Module):
    """Class 1 everywhere; records the mode of each forward pass; raises from the
    ``fail_at``-th forward pass on (None: never)."""

    def __init__(self, fail_at: int | None = None):
        super().__init__()
        self.linear = nn.Linear(8, 2)
        self.modes: list[bool] = []
        self.fail_at = fail_at

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.modes.append(self.training)
        if self.fail_at is not None and len(self.modes) >= self.fail_at:
            raise RuntimeError("boom")
        z = self.linear(x.flatten(1))
        return torch.stack([z[:, 0] * 0 - 1, z[:, 1] * 0 + 1], dim=1)


def images() -> list[tuple[torch.Tensor, int]]:
    return [(torch.full(SHAPE, 0.1 * i), 1) for i in range(3)]


RUNS = {
    "certify": lambda model, out, sigma=0.25: run_smoothing(
        model, 2, images(), range(3), Sampling(sigma=sigma, n=50, alpha=0.01, n0=10), out,
        batch_size=50, progress=False),
    "predict": lambda model, out, sigma=0.25: run_smoothing(
        model, 2, images(), range(3), Sampling(sigma=sigma, n=50, alpha=0.01), out,
        batch_size=50, progress=False),
    "attack": lambda model, out, sigma=0.25: run_attack(
        model, 2, images(), range(3), AttackSettings(sigma=sigma, epsilons=(0.25,), steps=1,
                                                     m_test=2, n=50, alpha=0.01), out,
        batch_size=50, progress=False),
}


@pytest.mark.parametrize("run", RUNS)
@pytest.mark.parametrize("training", [True, False])
def test_mode_is_eval_while_running_and_restored_after(tmp_path, run, training):
    model = Recording()
    model.train(training)
    RUNS[run](model, tmp_path / "out.tsv")
    assert model.modes and not any(model.modes)  # every forward pass in eval mode
    assert model.training is training


@pytest.mark.parametrize("run", RUNS)
def test_mode_is_restored_when_the_evaluation_raises(tmp_path, run):
    model = Recording(fail_at=2)
    model.train()
    with pytest.raises(RuntimeError, match="boom"):
        RUNS[run](model, tmp_path / "out.tsv")
    assert model.training


@pytest.mark.parametrize("run", RUNS)
def test_mode_is_restored_when_the_file_is_refused(tmp_path, run):
    out = tmp_path / "out.tsv"
    RUNS[run](Recording(), out)
    model = Recording()
    model.train()
    with pytest.raises(UserError, match="sigma"):
        RUNS[run](model, out, sigma=0.5)
    assert model.training and not model.modes
