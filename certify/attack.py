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

import functools
import struct
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from smoothadv.certify.precision import requested_precision
from smoothadv.certify.results_file import ResultsFile
from smoothadv.certify.runner import (
    compile_smoothed,
    image_seed,
    load_evaluation,
    outcome,
    run_resumable,
    smoother,
)
from smoothadv.common.settings import AttackSettings
from smoothadv.trainers.attacks import smoothadv_pgd
from torch.utils.data import Dataset

ATTACK_COLUMNS = ("idx", "label", "epsilon", "predict", "correct", "time")
ATTACK_KEYS = {"idx": int, "epsilon": float}


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
    batch_size: int | None = None,
    identity: dict | None = None,
    progress: bool = True,
    device: str | torch.device | None = None,
    allow_tf32: bool = False,
    precision: str | None = None,
    compile: bool | None = None,
) -> ResultsFile:
    """Attack each selected image at each ε not yet in ``out`` and classify it with PREDICT.

    The attack evaluates all ``m_test`` noisy copies in one forward/backward pass; PREDICT runs
    ``batch_size`` noisy samples at a time. ``identity`` (checkpoint hash, dataset, split) joins
    ``settings``, the precision (:mod:`certify.precision`: ``precision`` float32, tf32 or bf16,
    attack and PREDICT alike; TF32 also with ``allow_tf32``) and ``"compiled"`` in the settings
    record. ``compile`` (None: when the run repays it): PREDICT's forward passes go through
    ``torch.compile`` as :func:`certify.runner.run_smoothing`'s do (the PGD steps stay eager).
    Everything runs on ``device`` (default: where the dataset's images are); ``model`` may have
    no parameters.
    Its train/eval mode is restored afterwards.
    """
    settings.validate()
    requested_precision(precision, allow_tf32)
    device, generator, smooth, batch_size = smoother(model, num_classes, settings.sigma,
                                                     dataset, indices, batch_size, device)
    compiled = compile_smoothed(compile, out, smooth, dataset, indices,
                                min(batch_size, settings.n),
                                settings.n * len(settings.epsilons) * len(indices), device,
                                allow_tf32, precision)

    @functools.lru_cache(maxsize=1)  # the pairs come image by image: load each image once
    def image(idx: int) -> tuple[torch.Tensor, int]:
        x, label = dataset[idx]
        return x.to(device), int(label)

    def evaluate(key: tuple[int, float]) -> dict:
        idx, epsilon = key
        x, label = image(idx)
        generator.manual_seed(attack_seed(settings.seed, idx, epsilon))
        t0 = time.perf_counter()
        noise = torch.randn((1, settings.m_test, *x.shape), generator=generator,
                            device=device).mul_(settings.sigma)
        x_adv = smoothadv_pgd(model, x.unsqueeze(0), torch.tensor([label], device=device),
                              noise, epsilon, settings.steps)
        prediction = smooth.predict(x_adv[0], settings.n, settings.alpha, batch_size)
        return {"idx": idx, "epsilon": epsilon, **outcome(label, prediction, t0)}

    return run_resumable(model, out, ATTACK_COLUMNS,
                         {**(identity or {}), **settings.record(), "compiled": compiled},
                         [(idx, e) for idx in indices for e in settings.epsilons], evaluate,
                         key_columns=ATTACK_KEYS, desc="attack", unit="attack",
                         progress=progress, device=device, allow_tf32=allow_tf32,
                         precision=precision)


def attack_checkpoint(
    checkpoint: str | Path,
    settings: AttackSettings,
    out: str | Path,
    *,
    batch_size: int | None = None,
    progress: bool = True,
    allow_tf32: bool = False,
    precision: str | None = None,
    compile: bool | None = None,
    **selection,
) -> ResultsFile:
    """:func:`run_attack` on a checkpoint; ``selection`` goes to
    :func:`certify.runner.load_evaluation`."""
    settings.validate()
    requested_precision(precision, allow_tf32)
    ev = load_evaluation(checkpoint, **selection)
    return run_attack(ev.model, ev.num_classes, ev.images, ev.indices, settings, out,
                      batch_size=batch_size, identity=ev.identity, progress=progress,
                      device=ev.device, allow_tf32=allow_tf32, precision=precision,
                      compile=compile)

