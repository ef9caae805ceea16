"""SmoothAdv attacks on a linear base classifier, whose optimal ℓ2 attack direction is −w."""

from __future__ import annotations

import pytest
import torch
from conftest import LinearBinary
from smoothadv.trainers.attacks import smoothadv_ddn, smoothadv_pgd, vanilla_pgd
from torch import nn

SIGMA = 0.25


@pytest.fixture
def linear_classifier():
    """The hyperplane w·x = 0.5 with w = e₀, so 0.5 + margin·w lies at signed distance margin."""
    w = torch.zeros(1, 2, 4)
    w[0, 0, 0] = 1.0
    return LinearBinary(w, -0.5)


def batch_at(model, margins):
    """Points 0.5 + margin·w (inside [0,1] for |margin| ≤ 0.5), true class 1 where margin > 0."""
    w = model.linear.weight.detach().view(1, 2, 4)
    x = 0.5 + torch.tensor(margins).view(-1, 1, 1) * w
    return x, (torch.tensor(margins) > 0).long()


def noise_for(x, m, seed=0, sigma=SIGMA):
    g = torch.Generator().manual_seed(seed)
    return sigma * torch.randn((x.shape[0], m, *x.shape[1:]), generator=g)


def cosine_to_minus_w(model, delta):
    w = model.linear.weight.detach().flatten()
    return torch.nn.functional.cosine_similarity(delta.flatten(1), -w.expand(len(delta), -1))


@pytest.mark.parametrize("m", [1, 3, 16])
def test_pgd_moves_along_the_optimal_direction_and_ends_on_the_sphere(linear_classifier, m):
    x, y = batch_at(linear_classifier, [0.3, 0.1, 0.45, 0.2, 0.05])  # B=5 is no multiple of m
    eps = 0.2
    x_adv = smoothadv_pgd(linear_classifier, x, y, noise_for(x, m), eps, steps=10)
    delta = x_adv - x
    assert torch.allclose(delta.flatten(1).norm(dim=1), torch.full((5,), eps), atol=1e-5)
    assert (cosine_to_minus_w(linear_classifier, delta) > 1 - 1e-5).all()
    assert x_adv.min() >= 0 and x_adv.max() <= 1


def test_pgd_clamps_to_the_unit_box(linear_classifier):
    x, y = batch_at(linear_classifier, [0.45])
    x = x.clone()
    x[0, 0, 0] = 0.02  # the pixel the attack wants to lower sits near 0
    x_adv = smoothadv_pgd(linear_classifier, x, y, noise_for(x, 4), 0.5, steps=10)
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert (x_adv - x).flatten().norm() <= 0.5 + 1e-6


def test_gradient_free_pgd_follows_the_direction_without_backward(linear_classifier):
    x, y = batch_at(linear_classifier, [0.2, 0.1])
    x_adv = smoothadv_pgd(linear_classifier, x, y, noise_for(x, 4000), 0.2, steps=4,
                          gradient_free_sigma=SIGMA)
    assert (cosine_to_minus_w(linear_classifier, x_adv - x) > 0.9).all()


def test_vanilla_pgd_on_base_classifier(linear_classifier):
    x, y = batch_at(linear_classifier, [0.3, 0.2])
    delta = vanilla_pgd(linear_classifier, x, y, 0.25, steps=5) - x
    assert (cosine_to_minus_w(linear_classifier, delta) > 1 - 1e-5).all()
    assert torch.allclose(delta.flatten(1).norm(dim=1), torch.full((2,), 0.25), atol=1e-5)


def test_ddn_stays_within_epsilon_and_finds_close_adversaries(linear_classifier):
    # small noise, so that the majority vote at x itself is right and only moving makes it wrong
    x, y = batch_at(linear_classifier, [0.1, 0.15, 0.4, 0.45])
    eps = 0.3
    x_adv = smoothadv_ddn(linear_classifier, x, y, noise_for(x, 8, sigma=0.02), eps, steps=20)
    norms = (x_adv - x).flatten(1).norm(dim=1)
    assert (norms <= eps + 1e-6).all() and x_adv.min() >= 0 and x_adv.max() <= 1
    # the two points within ε of the boundary are pushed across it along −w
    assert (linear_classifier(x_adv[:2]).argmax(1) == 0).all()
    assert (cosine_to_minus_w(linear_classifier, x_adv[:2] - x[:2]) > 0.99).all()


def test_attacks_draw_no_noise_and_are_deterministic(linear_classifier):
    x, y = batch_at(linear_classifier, [0.3, 0.1, 0.2])
    noise = noise_for(x, 4)
    state = torch.get_rng_state()
    for attack in (smoothadv_pgd, smoothadv_ddn):
        first = attack(linear_classifier, x, y, noise, 0.3, 6)
        assert torch.equal(first, attack(linear_classifier, x, y, noise, 0.3, 6))
    assert torch.equal(torch.get_rng_state(), state)  # the given noise is the only noise used


def test_model_is_frozen_during_the_attack_and_restored_after():
    model = nn.Sequential(nn.Flatten(), nn.Linear(8, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))
    model.train()
    stats = model[2].running_mean.clone()
    x = torch.rand(6, 1, 2, 4)
    y = torch.randint(2, (6,))
    for attack in (smoothadv_pgd, smoothadv_ddn):
        attack(model, x, y, noise_for(x, 3), 0.5, 3)
        assert model.training and all(p.requires_grad for p in model.parameters())
        assert all(p.grad is None for p in model.parameters())
    assert torch.equal(model[2].running_mean, stats)  # eval mode: BN statistics untouched


# --- SmoothAdv-DDN as the reference trains with it (initial norm ε, 8-bit rounding, schedule) ---

def spread_linear(margins, k: int = 100):
    """A hyperplane with unit normal w = (1/√k)·1 over k = 100 pixels (1×10×10 inputs) and points
    x on the 8-bit grid at signed distance ``margin`` from it (true class 1 where margin > 0).
    Reaching distance ε moves each pixel by ε/10 only, so ε up to 4 fits inside [0,1]."""
    w = torch.full((1, 10, 10), 1 / k**0.5)
    x = torch.full((len(margins), 1, 10, 10), 128 / 255)
    model = LinearBinary(w, 0.0)
    with torch.no_grad():  # bias so that x sits at the requested signed distance
        b = torch.tensor(margins) - model.linear(x.flatten(1)).squeeze(1)
    return model, x, b, (torch.tensor(margins) > 0).long()


def signed_distances(model, x, b):
    with torch.no_grad():
        return model.linear(x.flatten(1)).squeeze(1) + b


class _Shifted(nn.Module):
    """A LinearBinary whose bias differs per example (one hyperplane offset per row)."""

    def __init__(self, model, b, m):
        super().__init__()
        self.model, self.b, self.m = model, b, m

    def forward(self, x):
        z = self.model.linear(x.flatten(1)).squeeze(1) + self.b.repeat_interleave(self.m)
        return torch.stack([-z, z], dim=1)


@pytest.mark.parametrize("epsilon", [0.25, 0.5, 1.0, 2.0, 4.0])
@pytest.mark.parametrize("steps", [2, 10])
def test_ddn_flips_a_point_just_inside_epsilon_and_keeps_one_just_outside(epsilon, steps):
    """The search starts at the (warmed-up) ε: a point at distance ε − 0.06 is pushed across
    within T steps (CIFAR's T = 10, ImageNet's 2-step DDN), even at ε = 2 and 4, which a search
    starting from norm 1 cannot reach in 10 steps of +5%; one at ε + 0.06 stays correct."""
    base, x, b, y = spread_linear([epsilon - 0.06, epsilon + 0.06])
    model = _Shifted(base, b, m=1)
    noise = torch.zeros((2, 1, *x.shape[1:]))
    x_adv = smoothadv_ddn(model, x, y, noise, epsilon, steps)
    distance = signed_distances(base, x_adv, b)
    assert distance[0] < 0 and distance[1] > 0
    # within ε, but for the reference's final rounding of δ: half a level per pixel at most
    assert ((x_adv - x).flatten(1).norm(dim=1) <= epsilon + x[0].numel() ** 0.5 / 510).all()


@pytest.mark.parametrize("epsilon", [0.25, 0.5, 1.0, 2.0])
def test_ddn_outputs_lie_on_the_8bit_grid_within_half_a_level_of_epsilon(epsilon):
    """Rounding is on by default, as in the reference, whose final rounding of δ to nearest may
    leave the ε-ball by √d/510 at most (on the spread hyperplane with T = 2 the kept δ, of norm
    1.05ε, is scaled to ε; at ε = 1 each pixel's −25.5/255 rounds to −26/255)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))
    x = torch.randint(0, 256, (6, 3, 8, 8)).float() / 255
    y = torch.randint(5, (6,))
    x_adv = smoothadv_ddn(model, x, y, noise_for(x, 4), epsilon, 10)
    base, xl, b, yl = spread_linear([epsilon - 0.06])
    xl_adv = smoothadv_ddn(_Shifted(base, b, 1), xl, yl, torch.zeros((1, 1, 1, 10, 10)),
                           epsilon, 2)
    for orig, adv in ((x, x_adv), (xl, xl_adv)):
        slack = orig[0].numel() ** 0.5 / 510
        assert ((adv - orig).flatten(1).norm(dim=1) <= epsilon + slack + 1e-6).all()
        assert adv.min() >= 0 and adv.max() <= 1
        assert torch.allclose(adv * 255, (adv * 255).round(), atol=1e-3)
    assert (x_adv != x).any()


def test_ddn_without_rounding_leaves_the_grid():
    base, x, b, y = spread_linear([0.3])
    x_adv = smoothadv_ddn(_Shifted(base, b, 1), x, y, torch.zeros((1, 1, 1, 10, 10)), 0.5, 10,
                          quantize_levels=None)
    assert not torch.allclose(x_adv * 255, (x_adv * 255).round(), atol=1e-3)


@pytest.mark.parametrize("steps", [1, 2, 10])
def test_ddn_step_sizes_are_the_reference_scheduler_stepped_before_each_step(steps):
    """PyTorch's CosineAnnealingLR(T_max=T, η_min=0.01) on lr 1, stepped before every step."""
    import warnings

    from smoothadv.trainers.attacks import ddn_step_sizes

    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps, eta_min=0.01)
    used = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "scheduler.step() before optimizer.step()": on purpose
        for _ in range(steps):
            sched.step()
            used.append(opt.param_groups[0]["lr"])
            opt.step()
    assert ddn_step_sizes(steps) == pytest.approx(used, abs=1e-12)
    assert ddn_step_sizes(steps)[-1] == pytest.approx(0.01)


def reference_ddn(model, x, y, noise, epsilon, steps, gamma=0.05, levels=256):
    """The SmoothAdv reference's multi-noise DDN training attack, as its code runs it
    (Hadisalman/smoothing-adversarial, class DDN, ``_attack_mutlinoise``, with ``init_norm`` and
    ``max_norm`` both ε, quantize on), re-derived line by line in this project's layout:
    the batch holds each example m times in a row (so noise is B·m×…), SGD with lr 1 on δ under
    CosineAnnealingLR(T_max=T, η_min=0.01) stepped *before* each step, the loss the mean over
    the batch of −log of the noise-averaged softmax, the gradient normalized per example; the
    step, the norm update (×(1∓γ), at most the box's worst norm), the rescale, rounding x+δ to
    k/255 and clamping to [0,1]; at the end the best δ renormed to ε (``torch.renorm``) and
    rounded itself, returned as x + δ with no clamp."""
    import torch.nn.functional as F
    from torch import optim

    b, m = noise.shape[:2]
    inputs, noise = x.repeat_interleave(m, 0), noise.flatten(0, 1)
    delta = torch.zeros_like(x, requires_grad=True)
    norm = torch.full((b,), epsilon, dtype=x.dtype)
    worst = torch.max(x, 1 - x).view(b, -1).norm(p=2, dim=1)
    optimizer = optim.SGD([delta], lr=1)
    scheduler = optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps, eta_min=0.01)
    best_l2, best_delta = worst.clone(), torch.zeros_like(x)
    import warnings

    with warnings.catch_warnings():  # the scheduler stepped before the optimizer, as there
        warnings.simplefilter("ignore")
        for _ in range(steps):
            scheduler.step()
            l2 = delta.data.view(b, -1).norm(p=2, dim=1)
            logits = model(inputs + delta.repeat_interleave(m, 0) + noise)
            pred = logits.argmax(1).reshape(-1, m).mode(1)[0]
            mean_softmax = F.softmax(logits, dim=1).reshape(-1, m, logits.shape[-1]).mean(1)
            loss = -F.nll_loss(torch.log(mean_softmax.clamp(min=1e-20)), y)
            is_adv = pred != y
            both = is_adv & (l2 < best_l2)
            best_l2[both], best_delta[both] = l2[both], delta.data[both]
            optimizer.zero_grad()
            loss.backward()
            delta.grad.div_(delta.grad.view(b, -1).norm(p=2, dim=1).view(-1, 1, 1, 1))
            optimizer.step()
            norm.mul_(1 - (2 * is_adv.to(x.dtype) - 1) * gamma)
            norm = torch.min(norm, worst)
            delta.data.mul_((norm / delta.data.view(b, -1).norm(2, 1)).view(-1, 1, 1, 1))
            delta.data.add_(x).mul_(levels - 1).round_().div_(levels - 1)
            delta.data.clamp_(0, 1).sub_(x)
    best_delta.renorm_(p=2, dim=0, maxnorm=epsilon)
    best_delta.mul_(levels - 1).round_().div_(levels - 1)
    return x + best_delta


def cifar_sized_case(seed=0, b=16, m=2):
    """A fixed 10-class linear model on CIFAR-sized 8-bit inputs, with fixed noise (float64,
    so that the two computations round every pixel alike)."""
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10)).double()
    with torch.no_grad():
        model[1].weight.copy_(torch.randn(10, 3 * 32 * 32, generator=g, dtype=torch.float64)
                              * 0.05)
        model[1].bias.zero_()
    x = torch.randint(0, 256, (b, 3, 32, 32), generator=g).double() / 255
    with torch.no_grad():
        y = model(x).argmax(1)  # correctly classified clean
    noise = 0.25 * torch.randn((b, m, 3, 32, 32), generator=g, dtype=torch.float64)
    return model, x, y, noise


@pytest.mark.parametrize(("epsilon", "steps"), [(0.25, 2), (0.25, 4), (0.5, 4), (1.0, 2),
                                                (0.5, 10)])
def test_ddn_equals_the_reference_algorithm_on_fixed_inputs(epsilon, steps):
    """Same model, inputs and noise: the output equals the reference's, pixel for pixel; its
    last step takes the smallest adversarial δ to ε and rounds δ to nearest, so the attack keeps
    nearly all of its ε (a rounding toward zero kept a third of it at T = 2)."""
    model, x, y, noise = cifar_sized_case()
    ours = smoothadv_ddn(model, x, y, noise, epsilon, steps)
    expected = reference_ddn(model, x, y, noise, epsilon, steps)
    assert torch.equal(ours, expected)
    found = (ours != x).flatten(1).any(1)
    assert found.sum() >= 4  # an adversarial δ was found (and kept) for several examples
    ratio = (ours - x).flatten(1).norm(dim=1)[found] / epsilon
    assert ratio.mean() > 0.7
    # rounding δ to nearest may leave the ball by half a level per pixel, never more
    assert (ratio * epsilon <= epsilon + (3 * 32 * 32) ** 0.5 / 510).all()


@pytest.mark.parametrize(("epsilon", "steps"), [(0.25, 2), (0.5, 4), (1.0, 2)])
def test_ddn_within_epsilon_stays_in_the_ball_on_the_grid(epsilon, steps):
    """The option off by default (a departure from the reference): outputs on the 8-bit grid
    and within ε, where the reference's rounding leaves the ball."""
    model, x, y, noise = cifar_sized_case(seed=1)
    within = smoothadv_ddn(model, x, y, noise, epsilon, steps, within_epsilon=True)
    assert ((within - x).flatten(1).norm(dim=1) <= epsilon + 1e-9).all()
    assert torch.allclose(within * 255, (within * 255).round(), atol=1e-6)
    assert within.min() >= 0 and within.max() <= 1
    reference = smoothadv_ddn(model, x, y, noise, epsilon, steps)
    assert ((reference - x).flatten(1).norm(dim=1) > epsilon).any()  # what the option avoids


@pytest.mark.parametrize("epsilon", [0.25, 0.5, 1.0])
def test_rounding_within_epsilon_moves_the_fewest_coordinates(epsilon):
    """δ of norm exactly ε (the attack's usual case): rounded to nearest where that stays
    inside; otherwise the fewest coordinates nearest rounding moved outward are rounded toward
    zero, largest saving of ‖δ‖² first, and one coordinate fewer would not have sufficed."""
    from smoothadv.trainers.attacks import _rounded_within, quantize

    g = torch.Generator().manual_seed(2)
    delta = torch.randn((12, 3, 32, 32), generator=g, dtype=torch.float64)
    delta = delta * (epsilon / delta.flatten(1).norm(dim=1)).view(-1, 1, 1, 1)
    delta[0] = 0.5 * delta[0]  # well inside: nearest rounding stays inside
    rounded = _rounded_within(delta, epsilon, 256)
    assert torch.allclose(rounded * 255, (rounded * 255).round(), atol=1e-9)
    assert (rounded.flatten(1).norm(dim=1) <= epsilon + 1e-12).all()
    nearest = quantize(delta)
    moved = (rounded != nearest).flatten(1).sum(1)
    outside = nearest.flatten(1).norm(dim=1) > epsilon
    assert not outside[0] and moved[0] == 0 and outside[1:].any()
    assert (moved[outside] > 0).all() and (moved[~outside] == 0).all()
    for i in outside.nonzero().flatten():
        near, zero = nearest[i].flatten(), (delta[i].flatten() * 255).trunc() / 255
        saving = (near.square() - zero.square()).sort(descending=True).values
        k = int(moved[i])
        assert near.square().sum() - saving[:k - 1].sum() > epsilon ** 2
        assert near.square().sum() - saving[:k].sum() <= epsilon ** 2 + 1e-12
        assert k < 0.05 * near.numel()  # a few coordinates, not all of them
