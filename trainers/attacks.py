"""Attacks on the smoothed soft classifier (SmoothAdv, Salman et al. 2019, Section 3).

All attacks work on a batch x (B×C×H×W, [0,1] pixels) with noise (B×m×C×H×W) drawn once by the
caller and reused in every step (Pseudocode 1, footnote 4). The objective (S) is estimated with
the plug-in estimator of eq. (6):

    J(x') = −log( (1/m) Σ_i softmax(F(x' + δ_i))_y ),

maximized over ‖x' − x‖₂ ≤ ε. Every attack puts the model in eval mode with parameter gradients
off, and restores both afterwards.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn import functional as F


@contextmanager
def frozen(model: nn.Module) -> Iterator[None]:
    """Eval mode and no parameter gradients inside; the previous state restored on exit."""
    was_training = model.training
    flags = [p.requires_grad for p in model.parameters()]
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(model.parameters(), flags, strict=True):
            p.requires_grad_(flag)
        model.train(was_training)


def _per_example_norm(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1).view(-1, *([1] * (t.dim() - 1)))


def _noisy_logits(model: nn.Module, x_adv: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """F(x' + δ_i) for every example and noise sample: B×m×K."""
    b, m = noise.shape[:2]
    return model((x_adv.unsqueeze(1) + noise).flatten(0, 1)).view(b, m, -1)


def smoothed_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-example −log of the mean over noise samples of softmax(F)_y (eq. 6); logits B×m×K."""
    mean_probs = logits.softmax(-1).mean(1)
    return -mean_probs.gather(1, y.view(-1, 1)).squeeze(1).clamp_min(1e-20).log()


def _unit(grad: torch.Tensor) -> torch.Tensor:
    """Per-example unit-ℓ2 direction; a zero gradient becomes a random direction."""
    norms = _per_example_norm(grad)
    zero = norms.flatten() == 0
    if zero.any():
        grad = grad.clone()
        grad[zero] = torch.randn_like(grad[zero])
        norms = _per_example_norm(grad)
    return grad / norms


def _project(x: torch.Tensor, x_adv: torch.Tensor, epsilon: float) -> torch.Tensor:
    """Clamp to [0,1], then scale δ = x' − x back into the ℓ2 ball of radius ε."""
    delta = x_adv.clamp(0, 1) - x
    scale = (epsilon / _per_example_norm(delta).clamp_min(1e-12)).clamp(max=1.0)
    return x + delta * scale


def stein_gradient(model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor,
                   noise: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gradient of J without backpropagating through F (Section 3.1, Stein's lemma):
    ∇G_y ≈ (1/m) Σ δ_i/σ² · softmax(F(x'+δ_i))_y, and ∇J = −∇G_y / G_y."""
    with torch.no_grad():
        probs = _noisy_logits(model, x_adv, noise).softmax(-1)
        p_y = probs.gather(2, y.view(-1, 1, 1).expand(-1, probs.shape[1], 1)).squeeze(2)
        weights = p_y.view(*p_y.shape, *([1] * (noise.dim() - 2)))
        grad_g = (noise * weights).mean(1) / sigma**2
        return -grad_g / p_y.mean(1).clamp_min(1e-20).view(-1, *([1] * (x_adv.dim() - 1)))


def smoothadv_pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, noise: torch.Tensor,
                  epsilon: float, steps: int, *, gradient_free_sigma: float | None = None
                  ) -> torch.Tensor:
    """SmoothAdv-PGD: from δ = 0, ``steps`` steps of size 2ε/T along the per-example
    unit-ℓ2 gradient of J, each followed by clamping x+δ to [0,1] and projection onto the ε-ball.

    With ``gradient_free_sigma`` the gradient is Stein's estimator (no backward pass).
    Zero noise with m = 1 is vanilla PGD on the base classifier.
    """
    if epsilon == 0 or steps == 0:
        return x.detach().clone()
    step_size = 2 * epsilon / steps
    x = x.detach()
    x_adv = x.clone()
    with frozen(model):
        for _ in range(steps):
            if gradient_free_sigma is not None:
                grad = stein_gradient(model, x_adv, y, noise, gradient_free_sigma)
            else:
                x_adv.requires_grad_(True)
                loss = smoothed_loss(_noisy_logits(model, x_adv, noise), y).sum()
                (grad,) = torch.autograd.grad(loss, x_adv)
                x_adv = x_adv.detach()
            x_adv = _project(x, x_adv + step_size * _unit(grad), epsilon)
    return x_adv.detach()


def vanilla_pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epsilon: float,
                steps: int) -> torch.Tensor:
    """PGD on the base classifier itself: no noise inside the attack."""
    noise = torch.zeros((x.shape[0], 1, *x.shape[1:]), device=x.device, dtype=x.dtype)
    return smoothadv_pgd(model, x, y, noise, epsilon, steps)


def ddn_step_sizes(steps: int, eta_min: float = 0.01) -> list[float]:
    """DDN's step sizes: cosine annealing from 1 to ``eta_min`` over ``steps`` steps, as the
    SmoothAdv reference runs it. Its PyTorch ``CosineAnnealingLR`` is stepped *before* each
    step, so under PyTorch ≥ 1.1 step i (0-based) uses the schedule's value at i + 1:
    η_i = η_min + (1 − η_min)·(1 + cos(π(i+1)/T))/2, ending at η_min."""
    return [eta_min + (1 - eta_min) * (1 + math.cos(math.pi * (i + 1) / steps)) / 2
            for i in range(steps)]


def quantize(x: torch.Tensor, levels: int = 256) -> torch.Tensor:
    """Round to the nearest of ``levels`` evenly spaced values k/(levels−1) (8-bit: k/255)."""
    return (x * (levels - 1)).round() / (levels - 1)


def _reference_final(delta: torch.Tensor, epsilon: float, levels: int | None) -> torch.Tensor:
    """The SmoothAdv reference's last step of DDN (its ``max_norm``, the trained ε): each δ
    longer than ε is scaled to ε as ``torch.renorm`` does (by ε/(‖δ‖ + 1e-7)), then δ itself
    is rounded to the nearest grid value k/(levels−1). x + δ then lies on the grid when x does,
    but may leave the ε-ball by up to √d/(2·(levels−1)): rounding moves each coordinate by up
    to half a level."""
    delta = delta.renorm(p=2, dim=0, maxnorm=epsilon)
    return delta if levels is None else quantize(delta, levels)


def _rounded_within(delta: torch.Tensor, epsilon: float, levels: int) -> torch.Tensor:
    """δ (already within ε) rounded to the grid k/(levels−1), staying within ε: to nearest, and
    where that leaves the ε-ball, the fewest coordinates that nearest rounding moved outward
    are rounded toward zero instead, largest reduction of ‖δ‖² first."""
    nearest = quantize(delta, levels)
    toward_zero = (delta * (levels - 1)).trunc() / (levels - 1)
    flat_near, flat_zero = nearest.flatten(1), toward_zero.flatten(1)
    saving = flat_near.square() - flat_zero.square()  # > 0 where nearest rounded outward
    excess = flat_near.square().sum(1) - epsilon ** 2  # > 0: outside the ball
    order = saving.argsort(dim=1, descending=True)
    saved = saving.gather(1, order).cumsum(1)
    # switch the k largest savings, k the fewest whose sum covers the excess (0 when inside)
    k = (saved < excess.unsqueeze(1)).sum(1) + (excess > 0).long()
    switch = torch.zeros_like(saving, dtype=torch.bool).scatter_(
        1, order, torch.arange(order.shape[1], device=delta.device).expand_as(order)
        < k.unsqueeze(1))
    return torch.where(switch, flat_zero, flat_near).view_as(delta)


def smoothadv_ddn(model: nn.Module, x: torch.Tensor, y: torch.Tensor, noise: torch.Tensor,
                  epsilon: float, steps: int, *, gamma: float = 0.05,
                  init_norm: float | None = None, quantize_levels: int | None = 256,
                  within_epsilon: bool = False) -> torch.Tensor:
    """SmoothAdv-DDN (Rony et al. 2019 on J), as the SmoothAdv reference trains with it.

    Each step i: if the current point is adversarial (the majority vote over the m noisy copies
    is wrong) and δ is the smallest such so far, keep it; step δ by η_i (:func:`ddn_step_sizes`)
    along the unit gradient of J; multiply the target norm by (1−γ) when the point was
    adversarial and by (1+γ) otherwise (capped at the largest norm the [0,1] box allows);
    rescale δ to it; round x+δ to the 8-bit grid (``quantize_levels``; None: no rounding) and
    clamp it to [0,1]. The target norm starts at ``init_norm``, by default ε: the reference sets
    it every epoch to the warmed-up ε, the ε the trainer passes here.

    The output is x plus the smallest adversarial δ found, scaled to ε if longer and rounded
    to the grid as the reference does (:func:`_reference_final`; not clamped: on the 8-bit
    grid x + δ stays in [0,1]); it may lie outside the ε-ball by up to √d/(2·255). Examples
    never found adversarial come back clean, as in the reference. ``within_epsilon`` (off by
    default; a departure from the reference) rounds so that the output stays within ε instead,
    rounding toward zero only the fewest coordinates it must (:func:`_rounded_within`).
    """
    x = x.detach()
    if epsilon == 0 or steps == 0:
        return x.clone()
    b = x.shape[0]
    shape = (-1, *([1] * (x.dim() - 1)))
    worst = torch.maximum(x, 1 - x).flatten(1).norm(dim=1)
    start = epsilon if init_norm is None else init_norm
    norm = torch.full((b,), start, device=x.device, dtype=x.dtype).minimum(worst)
    best_norm = worst.clone()
    best_delta = torch.zeros_like(x)
    delta = torch.zeros_like(x)
    with frozen(model):
        for step in ddn_step_sizes(steps):
            delta.requires_grad_(True)
            logits = _noisy_logits(model, x + delta, noise)
            (grad,) = torch.autograd.grad(smoothed_loss(logits, y).sum(), delta)
            delta = delta.detach()
            votes = F.one_hot(logits.argmax(-1), logits.shape[-1]).sum(1)
            is_adv = votes.argmax(1) != y
            l2 = delta.flatten(1).norm(dim=1)
            better = is_adv & (l2 < best_norm)
            best_norm = torch.where(better, l2, best_norm)
            best_delta[better] = delta[better]
            delta = delta + step * _unit(grad)
            norm = (norm * (1 - (2 * is_adv.to(x.dtype) - 1) * gamma)).minimum(worst)
            delta = delta * (norm / delta.flatten(1).norm(dim=1).clamp_min(1e-12)).view(shape)
            x_adv = x + delta
            if quantize_levels is not None:
                x_adv = quantize(x_adv, quantize_levels)
            delta = x_adv.clamp(0, 1) - x
    if within_epsilon and quantize_levels is not None:
        delta = _rounded_within(_project(x, x + best_delta, epsilon) - x, epsilon,
                                quantize_levels)
        return (x + delta).clamp(0, 1)
    return x + _reference_final(best_delta, epsilon, quantize_levels)
