"""One training step per loader batch: Gaussian augmentation (Cohen et al.), SmoothAdv
(Salman et al. 2019, Pseudocode 1) and vanilla adversarial training, with the batching of
SmoothAdv's reference script (Hadisalman/smoothing-adversarial, code/train_pgd.py;
docs/reference-facts.md, "Batching").

Per loader batch of B images, split into m chunks of about B/m images: each chunk, each image
repeated m times with its own fresh noise, is attacked; with ``multi_noise`` each chunk then takes
its own SGD step on its B/m × m noisy attacked samples, otherwise the first noisy copy of every
image is kept and one SGD step is taken on the B images. The noise of a chunk is drawn once and
used in every attack step and in the update (Pseudocode 1, footnote 4).

Self-training (``extra_data``, Carmon et al. 2019): both halves of a mixed batch are attacked
alike and the loss weights each example, 1 labelled and ``extra_weight`` pseudo-labelled
(:func:`_sgd_step`).
"""

from __future__ import annotations

import torch
from smoothadv.trainers import attacks
from smoothadv.trainers.config import TrialConfig
from torch import nn
from torch.nn import functional as F


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside a DistributedDataParallel wrapper."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def attack_epsilon(config: TrialConfig, epoch: int) -> float:
    """ε warm-up: in epoch e (0-based) the attack uses min(ε, (e+1)·ε/warmup)."""
    if config.warmup_epochs == 0:
        return config.epsilon
    return min(config.epsilon, (epoch + 1) * config.epsilon / config.warmup_epochs)


def attack_chunk(model: nn.Module, x: torch.Tensor, y: torch.Tensor, noise: torch.Tensor,
                 config: TrialConfig, epsilon: float) -> torch.Tensor:
    """x̂ for one chunk, per the trial's method (identity for Gaussian augmentation).

    Under DDP the attack runs on the plain model: its passes never enter DDP's forward, so
    they neither trigger collectives nor touch the gradient reducer's bookkeeping."""
    if config.method == "gaussian" or epsilon == 0:
        return x
    model = unwrap(model)
    if config.method == "vanilla_adv":
        return attacks.vanilla_pgd(model, x, y, epsilon, config.steps)
    if config.attack == "ddn":
        return attacks.smoothadv_ddn(model, x, y, noise, epsilon, config.steps,
                                     quantize_levels=256 if config.ddn_quantize else None,
                                     within_epsilon=config.ddn_within_epsilon)
    return attacks.smoothadv_pgd(model, x, y, noise, epsilon, config.steps,
                                 gradient_free_sigma=config.sigma if config.gradient_free else None)


def _sgd_step(model, optimizer, inputs, targets, stats,
              weights: torch.Tensor | None = None) -> None:
    """One SGD step on cross-entropy; with per-example ``weights`` w_i the loss is
    (1/n) Σ_i w_i·CE_i over the n inputs (Carmon et al.'s robust self-training code: weight 1
    for labelled, ``extra_weight`` for pseudo-labelled examples, normalized by batch size)."""
    model.train()
    logits = model(inputs)
    if weights is None:
        loss = F.cross_entropy(logits, targets)
    else:
        loss = (weights * F.cross_entropy(logits, targets, reduction="none")).sum() / len(targets)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    stats["loss"] += float(loss.detach()) * len(targets)
    stats["correct"] += int((logits.argmax(1) == targets).sum())
    stats["samples"] += len(targets)


def train_batch(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor,
                y: torch.Tensor, config: TrialConfig, epsilon: float, stats: dict,
                weights: torch.Tensor | None = None) -> None:
    """One loader batch, batched as in the reference script (module docstring); ``weights``
    are per-example loss weights (self-training), following each image into its chunk."""
    m = config.m_train
    kept_x, kept_y, kept_w = [], [], []
    for chunk in torch.arange(len(y), device=y.device).tensor_split(m):
        if len(chunk) == 0:
            continue
        xc, yc = x[chunk], y[chunk]
        noise = config.sigma * torch.randn((len(chunk), m, *x.shape[1:]), device=x.device)
        x_hat = attack_chunk(model, xc, yc, noise, config, epsilon)
        noisy = x_hat.unsqueeze(1) + noise  # the same noise as in the attack
        wc = [] if weights is None else [weights[chunk]]
        if config.multi_noise:
            _sgd_step(model, optimizer, noisy.flatten(0, 1), yc.repeat_interleave(m), stats,
                      *(w.repeat_interleave(m) for w in wc))
        else:
            kept_x.append(noisy[:, 0])
            kept_y.append(yc)
            kept_w += wc
    if not config.multi_noise:
        _sgd_step(model, optimizer, torch.cat(kept_x), torch.cat(kept_y), stats,
                  *([torch.cat(kept_w)] if kept_w else []))
