"""The SmoothAdv empirical attack (Salman et al. 2019, Section 4.3), resumable and shardable.

For each selected image x (label y) and each radius ε: SmoothAdv-PGD maximizes the plug-in
objective J(x') = −log((1/m) Σ_i softmax(F(x' + δ_i))_y) over ‖x' − x‖₂ ≤ ε with ``m_test``
noise samples δ_i ~ N(0, σ²I) drawn once and reused in every step; the attacked x' is then
classified by PREDICT (Cohen et al.) on fresh noise. The empirical accuracy at ε is the fraction
of images PREDICT gets right (an abstention counts as wrong).

Rows are keyed by (idx, ε). Each pair's noise comes from a generator seeded by (seed, idx, ε), so
shards and resumed runs reproduce the rows of one uninterrupted run.
"""

from __future__ import annotations

import datetime
import math
import struct
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from certify.results_file import ResultsFile
from certify.runner import Sampling, image_seed, load_evaluation
from certify.smooth import ABSTAIN, Smooth
from trainers.attacks import smoothadv_pgd
from trainers.errors import UserError

ATTACK_COLUMNS = ("idx", "label", "epsilon", "predict", "correct", "time")
ATTACK_KEYS = {"idx": int, "epsilon": float}


@dataclass(frozen=True)
class AttackSettings:
    """Settings that determine an attack run's numbers (recorded beside the output).

    ``epsilons`` are ℓ2 radii in [0,1] pixel units; ``steps`` and ``m_test`` parametrize
    SmoothAdv-PGD (paper: 20 steps, m_test = 128); ``n`` and ``alpha`` parametrize PREDICT.
    """

    sigma: float
    epsilons: tuple[float, ...]
    steps: int = 20
    m_test: int = 128
    n: int = 100_000
    alpha: float = 0.001
    seed: int = 0

    def __post_init__(self) -> None:
        # Floats (with −0.0 folded into 0.0) so keys, seeds and the settings record agree.
        object.__setattr__(self, "epsilons", tuple(float(e) + 0.0 for e in self.epsilons))

    def validate(self) -> None:
        Sampling(sigma=self.sigma, n=self.n, alpha=self.alpha, seed=self.seed).validate()
        if not self.epsilons:
            raise UserError("epsilon: give at least one radius")
        for e in self.epsilons:
            if not (math.isfinite(e) and e >= 0):
                raise UserError(f"epsilon: must be finite and ≥ 0, got {e}")
        if len(set(self.epsilons)) != len(self.epsilons):
            raise UserError(f"epsilon: each radius once, got {list(self.epsilons)}")
        if self.steps < 1:
            raise UserError(f"steps: must be ≥ 1, got {self.steps}")
        if self.m_test < 1:
            raise UserError(f"m_test: must be ≥ 1, got {self.m_test}")

    def record(self) -> dict:
        """The settings as written to FILE.meta.json (JSON types, so a reread compares equal)."""
        return {**asdict(self), "epsilons": list(self.epsilons)}


def attack_seed(seed: int, idx: int, epsilon: float) -> int:
    """The noise seed of image ``idx`` attacked at radius ``epsilon`` (its IEEE-754 bits)."""
    (bits,) = struct.unpack("<Q", struct.pack("<d", epsilon))
    return image_seed(image_seed(seed, idx), bits)


def run_attack(
    model: torch.nn.Module,
    num_classes: int,
    dataset: Dataset,
    indices: Sequence[int],
    settings: AttackSettings,
    out: str | Path,
    *,
    batch_size: int = 400,
    identity: dict | None = None,
    progress: bool = True,
) -> ResultsFile:
    """Attack each selected image at each ε not yet in ``out`` and classify it with PREDICT.

    The attack evaluates all ``m_test`` noisy copies in one forward/backward pass; PREDICT runs
    ``batch_size`` noisy samples at a time. ``identity`` (checkpoint hash, dataset, split) joins
    ``settings`` in the settings record. The model's train/eval mode is restored afterwards.
    """
    settings.validate()
    if batch_size < 1:
        raise UserError(f"batch: must be ≥ 1, got {batch_size}")
    device = next(model.parameters()).device
    generator = torch.Generator(device=device)
    smooth = Smooth(model, num_classes, settings.sigma, generator=generator)
    was_training = model.training
    model.eval()
    try:
        with ResultsFile(out, ATTACK_COLUMNS, {**(identity or {}), **settings.record()},
                         key_columns=ATTACK_KEYS) as results:
            if results.repaired_torn_line:
                tqdm.write(f"{out}: removed a torn last line left by an interrupted run")
            todo = [(idx, e) for idx in indices for e in settings.epsilons
                    if (idx, e) not in results.done]
            bar = tqdm(todo, desc="attack", unit="attack", disable=not progress,
                       postfix={"done before": len(indices) * len(settings.epsilons) - len(todo)})
            loaded = None
            for idx, epsilon in bar:
                if loaded != idx:
                    x, label = dataset[idx]
                    x, label, loaded = x.to(device), int(label), idx
                generator.manual_seed(attack_seed(settings.seed, idx, epsilon))
                t0 = time.perf_counter()
                noise = torch.randn((1, settings.m_test, *x.shape), generator=generator,
                                    device=device).mul_(settings.sigma)
                x_adv = smoothadv_pgd(model, x.unsqueeze(0), torch.tensor([label], device=device),
                                      noise, epsilon, settings.steps)
                prediction = smooth.predict(x_adv[0], settings.n, settings.alpha, batch_size)
                elapsed = datetime.timedelta(seconds=time.perf_counter() - t0)
                results.append({"idx": idx, "label": label, "epsilon": epsilon,
                                "predict": prediction,
                                "correct": int(prediction == label and prediction != ABSTAIN),
                                "time": str(elapsed)})
    finally:
        model.train(was_training)
    return results


def attack_checkpoint(
    checkpoint: str | Path,
    settings: AttackSettings,
    out: str | Path,
    *,
    batch_size: int = 400,
    progress: bool = True,
    **selection,
) -> ResultsFile:
    """:func:`run_attack` on a checkpoint; ``selection`` goes to
    :func:`certify.runner.load_evaluation`."""
    settings.validate()
    ev = load_evaluation(checkpoint, **selection)
    return run_attack(ev.model, ev.num_classes, ev.images, ev.indices, settings, out,
                      batch_size=batch_size, identity=ev.identity, progress=progress)


def empirical_accuracy(path: str | Path) -> pd.DataFrame:
    """Per ε (the index, ascending): ``accuracy`` (mean of ``correct``) and ``images``."""
    rows = pd.read_csv(path, sep="\t")
    return (rows.groupby("epsilon")["correct"].agg(accuracy="mean", images="size")
            .sort_index())
