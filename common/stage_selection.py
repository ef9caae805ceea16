"""Staged certification: which trials of a sweep are still worth certifying in full.

Salman et al. (2019) chose their models on a subsample (500 test images; their appendix on
selecting the models of the certified-accuracy envelope) and reported the chosen ones on the
full test set. Staged certification makes that choice with a known risk: stage 1 certifies
every trial on m images with a small n1; a trial goes on (:func:`reachable_trials`) unless
even an optimistic bound on its certified accuracy at full n is, at every radius, below the
best pessimistic bound of the others, overall and within its own σ (the per-σ envelope, the
paper's Figure 2); stage 3 re-certifies on the full test set the trials that win the
envelope somewhere (:func:`winners`, under the tie rule of common.envelope, where every
envelope is taken). Only the decision logic lives here (numpy, pandas, scipy.stats; the
Clopper–Pearson bounds are common.binomial's): the sweep wires it in.

The bounds of one trial at radius r (:func:`certified_bounds`), m its stage-1 rows, β = ``alpha``:

- lower: the Clopper–Pearson lower bound (one-sided 1 − β) on k/m, k the rows right with stage-1
  radius ≥ r. A radius from n1 samples is smaller, in expectation, than one from full_n ≫ n1
  samples, so this also bounds the certified accuracy at full n from below; the only
  exceptions are images whose stage-1 certificate is itself wrong (probability ≤ α1 each).
- upper (the rule): each row gets an optimistic full-n radius ρ_i, and the bound is the
  Clopper–Pearson upper bound (one-sided 1 − β) on #{ρ_i ≥ r}/m plus ε (below), 0 beyond the
  largest radius full n can certify, R_max = σ·Φ⁻¹(full_alpha^(1/full_n)). With n1 and α1 known,
  nA is read back from pA_lower (CERTIFY reports CP_lower(nA, n1; α1)) and p̄ = CP_upper(nA,
  n1; β); ρ_i = σ·Φ⁻¹(p̄) when right, σ·Φ⁻¹(max(p̄, 1 − pA_lower)) when abstaining (the label
  may be ĉ, or another class, which has at most 1 − p_ĉ), σ·Φ⁻¹(1 − pA_lower) when wrong
  (ĉ ≠ label, so p_label ≤ 1 − p_ĉ ≤ 1/2 for a certified wrong class: never), each only when
  its p ≥ 1/2 and capped at R_max. Without n1, or when pA_lower matches no count, p̄ = 1.
  A full-n run on image i certifies it right at r with ρ_i < r only if one of three bounds
  fails there (p̄, the stage-1 pA_lower, the full-n CP_lower): probability ≤ ε = β + α1 +
  full_alpha. So the full-n accuracy E[Y] ≤ E[1[ρ ≥ r]] + ε, and the bound holds w.p. ≥ 1 − β.

Rows of ``certify --sequential`` are handled conservatively: a pA_lower from an early look (other
n, α/K) matches no count (p̄ = 1), an early-stopped wrong row (pA_lower 0) gets R_max.

Soundness, with the stage-1 images a random sample of the test set: the upper bound is below
the trial's true full-n certified accuracy at a given r with probability ≤ β, each lower bound
above its trial's with probability ≤ β (given the assumption of the lower side). A trial whose
full-n curve attains its σ group's (positive) envelope at some r of ``radii`` is therefore
dropped with probability ≤ (1 + K)·β, K the trials of its σ group (the overall test is implied
by the per-σ one, the overall envelope being the higher; it only words the reason). Radii that no
stage-1 row of a σ group certifies (beyond σ·Φ⁻¹(α1^(1/n1))) have envelope lower bound 0 there
and keep every trial of that σ that full n could take to them: choose n1 or the radii so that
stage 1 reaches the radii that matter.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy.stats import norm
from smoothadv.common import envelope
from smoothadv.common.binomial import cp_lower, cp_upper
from smoothadv.common.metrics import certified_accuracy, right_rows

REACHABLE = "reachable"


@functools.lru_cache(maxsize=256)
def largest_radius(sigma: float, n: int, alpha: float) -> float:
    """σ·Φ⁻¹(α^(1/n)): the largest radius CERTIFY with n samples at level α can report (all n
    votes for ĉ: CP_lower(n, n; α) = α^(1/n))."""
    return float(sigma * norm.ppf(alpha ** (1.0 / n)))


def default_radii(sigma: float, n: int, alpha: float, target_radius: float | None = None,
                  step: float = 0.25) -> list[float]:
    """Where trials of noise level up to ``sigma`` are compared when the spec names no radii:
    every ``step`` from 0 up to the largest radius ``n`` samples certify at ``sigma``
    (largest_radius) or ``target_radius`` when smaller. Beyond the former every trial
    certifies 0, so nobody is dominated there."""
    top = largest_radius(sigma, n, alpha)
    if target_radius:
        top = min(top, target_radius)
    return [round(i * step, 10) for i in range(math.floor(top / step + 1e-9) + 1)]


@functools.lru_cache(maxsize=16)
def _lower_table(n: int, alpha: float) -> np.ndarray:
    """CP_lower(k, n; α) for k = 0 … n (increasing in k)."""
    return cp_lower(np.arange(n + 1), n, alpha)


@functools.lru_cache(maxsize=16)
def _upper_table(n: int, alpha: float) -> np.ndarray:
    """CP_upper(k, n; α) for k = 0 … n."""
    return cp_upper(np.arange(n + 1), n, alpha)


def implied_counts(p_lower: np.ndarray, n: int, alpha: float, tol: float = 1e-9) -> np.ndarray:
    """The count nA of n for which CP_lower(nA, n; α) = ``p_lower`` (CERTIFY's pA_lower), or −1
    where no count matches within ``tol`` (another n or α, a sequential row)."""
    table = _lower_table(int(n), float(alpha))
    p_lower = np.asarray(p_lower, dtype=float)
    j = np.clip(np.searchsorted(table, p_lower - tol, side="left"), 0, n)
    return np.where(np.abs(table[j] - p_lower) <= tol, j, -1)


def optimistic_radii(rows: pd.DataFrame, sigma: float, alpha: float, full_n: int,
                     full_alpha: float, stage1_n: int | None = None,
                     stage1_alpha: float | None = None) -> np.ndarray:
    """Per row, the largest radius a full-n CERTIFY could give it, right, unless a bound of
    probability ≤ α + α1 + full_alpha fails (the module's rule); −inf: it cannot be right.
    ``alpha`` is the level of the upper bound p̄; ``stage1_alpha`` defaults to ``full_alpha``."""
    right = right_rows(rows)
    predict = rows["predict"].to_numpy()
    p_lower = rows["pA_lower"].to_numpy(dtype=float) if "pA_lower" in rows else np.zeros(len(rows))
    p_bar = np.ones(len(rows))
    if stage1_n is not None:
        a1 = full_alpha if stage1_alpha is None else stage1_alpha
        counts = implied_counts(p_lower, stage1_n, a1)
        known = counts >= 0
        p_bar[known] = _upper_table(int(stage1_n), float(alpha))[counts[known]]
    abstain = predict < 0
    p_opt = np.where(right, p_bar,
                     np.where(abstain, np.maximum(p_bar, 1 - p_lower), 1 - p_lower))
    with np.errstate(divide="ignore"):
        rho = sigma * norm.ppf(np.clip(p_opt, 0.0, 1.0))
    rho = np.minimum(rho, largest_radius(sigma, full_n, full_alpha))
    return np.where(p_opt >= 0.5, rho, -np.inf)


def pessimistic_radii(rows: pd.DataFrame, sigma: float, alpha: float, full_n: int,
                      full_alpha: float, full_n0: int, stage1_n: int,
                      stage1_alpha: float) -> tuple[np.ndarray, float]:
    """Per row, a radius a full-n CERTIFY reaches, right, unless an event of probability ≤
    ε_low (returned) happens: with nA read back from a right row's pA_lower, the label's
    probability p ≥ p_low = CP_lower(nA, n1; α) (fails w.p. ≤ α); then full n's count is ≥
    k_min = the α-quantile of Binomial(full_n, p_low) (fails w.p. ≤ α), so its pA_lower is ≥
    CP_lower(k_min, full_n; full_alpha); and its n0 samples choose the label (fails w.p. ≤
    exp(−2·n0·(p_low − ½)²), Hoeffding). −inf for a row with no such radius (not right, its
    count unknown, p_low ≤ ½). Stage 1 cannot certify beyond σ·Φ⁻¹(α1^(1/n1)); this lower
    side reaches the radii full n certifies."""
    from scipy.stats import binom

    counts = implied_counts(rows["pA_lower"].to_numpy(dtype=float) if "pA_lower" in rows
                            else np.zeros(len(rows)), stage1_n, stage1_alpha)
    usable = right_rows(rows) & (counts >= 0)
    p_low = np.where(usable, _lower_table(int(stage1_n), float(alpha))[np.maximum(counts, 0)],
                     0.0)
    usable &= p_low > 0.5
    k_min = np.where(usable, binom.ppf(alpha, full_n, p_low), 0).astype(int)
    p_full = _lower_table(int(full_n), float(full_alpha))[k_min]
    with np.errstate(divide="ignore"):
        rho = sigma * norm.ppf(p_full)
    rho = np.where(usable & (p_full > 0.5), rho, -np.inf)
    chosen = p_low[usable & (p_full > 0.5)]
    slack = float(np.exp(-2 * full_n0 * (chosen.min() - 0.5) ** 2)) if len(chosen) else 0.0
    return rho, 2 * alpha + slack


def failure(alpha: float, full_alpha: float, stage1_alpha: float | None = None) -> float:
    """ε = α + α1 + full_alpha: per image, the probability that a full-n run beats its
    optimistic radius (one of the bounds behind it fails)."""
    return alpha + (full_alpha if stage1_alpha is None else stage1_alpha) + full_alpha


def certified_bounds(rows: pd.DataFrame, radii: Sequence[float], alpha: float, *,
                     sigma: float | None = None, full_n: int | None = None,
                     full_alpha: float | None = None, stage1_n: int | None = None,
                     stage1_alpha: float | None = None,
                     full_n0: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(lower, upper) over ``radii``: Clopper–Pearson bounds, each one-sided at 1 − ``alpha``
    (together the exact two-sided interval at 1 − 2·alpha), on one trial's certified accuracy.

    Without ``sigma``, ``full_n`` and ``full_alpha`` both bound the accuracy the rows' own radii
    certify. With them, ``upper`` bounds the accuracy a full-n CERTIFY would certify (the
    module's rule: optimistic radii, plus ε, 0 beyond R_max); ``stage1_n`` and
    ``stage1_alpha`` (default ``full_alpha``), the rows' own n and α, sharpen it. With
    ``full_n0`` and ``stage1_n`` too, ``lower`` is also at least the bound the pessimistic
    full-n radii give (:func:`pessimistic_radii`, less their ε_low): this one reaches radii
    the stage-1 rows cannot certify."""
    radii = np.asarray(radii, dtype=float)
    m = len(rows)
    if m == 0:
        return np.zeros(len(radii)), np.ones(len(radii))
    radius = rows["radius"].to_numpy(dtype=float)
    k = np.rint(certified_accuracy(radius, right_rows(rows), radii) * m)
    lower = cp_lower(k, m, alpha)
    if sigma is None or full_n is None or full_alpha is None:
        return lower, cp_upper(k, m, alpha)
    rho = optimistic_radii(rows, sigma, alpha, full_n, full_alpha, stage1_n, stage1_alpha)
    reach = np.sort(rho)
    k_opt = m - np.searchsorted(reach, radii, side="left")
    upper = np.minimum(1.0, cp_upper(k_opt, m, alpha) + failure(alpha, full_alpha,
                                                                 stage1_alpha))
    if full_n0 is not None and stage1_n is not None:
        a1 = full_alpha if stage1_alpha is None else stage1_alpha
        rho_low, slack = pessimistic_radii(rows, sigma, alpha, full_n, full_alpha, full_n0,
                                           stage1_n, a1)
        k_low = m - np.searchsorted(np.sort(rho_low), radii, side="left")
        lower = np.maximum(lower, cp_lower(k_low, m, alpha) - slack)
    return lower, np.where(radii > largest_radius(sigma, full_n, full_alpha), 0.0, upper)


def reachable_trials(stage1: Mapping[str, pd.DataFrame], sigma_of: Mapping[str, float],
                     radii: Sequence[float], alpha: float, full_n: int, full_alpha: float, *,
                     stage1_n: int | None = None, stage1_alpha: float | None = None,
                     full_n0: int | None = None) -> dict[str, str]:
    """Per trial, ``"reachable"`` or why it stops. A trial goes on when at some radius its upper
    bound (at full n) is positive and ≥ the envelope's lower bound there (the largest lower
    bound over trials), overall or among the trials of its own σ; otherwise the reason names
    the radius where it came closest to its σ group's envelope."""
    radii = np.asarray(radii, dtype=float)
    bounds = {t: certified_bounds(rows, radii, alpha, sigma=sigma_of[t], full_n=full_n,
                                  full_alpha=full_alpha, stage1_n=stage1_n,
                                  stage1_alpha=stage1_alpha, full_n0=full_n0)
              for t, rows in stage1.items()}
    if not bounds:
        return {}
    lows = {t: low for t, (low, _) in bounds.items()}
    overall, *per_sigma = [_best(lows, members) for members in _groups(lows, sigma_of)]
    group = dict(zip(_sigmas(lows, sigma_of), per_sigma, strict=True))
    out = {}
    for trial, (_, upper) in bounds.items():
        sigma = sigma_of[trial]
        own = group[sigma]
        if np.any((upper > 0) & ((upper >= overall) | (upper >= own))):
            out[trial] = REACHABLE
            continue
        if not np.any(upper > 0):
            out[trial] = (f"no radius within reach: full n certifies at most r="
                          f"{largest_radius(sigma, full_n, full_alpha):.3g} at σ={sigma:g}")
            continue
        j = int(np.argmin(np.where(upper > 0, own - upper, np.inf)))
        out[trial] = (f"dominated at every radius: best upper {upper[j]:.3f} < envelope lower "
                      f"{own[j]:.3f} at r={radii[j]:g} (σ={sigma:g}; overall {overall[j]:.3f})")
    return out


def _sigmas(trials: Mapping[str, object], sigma_of: Mapping[str, float]) -> list[float]:
    return sorted({sigma_of[t] for t in trials})


def _groups(trials: Mapping[str, object], sigma_of: Mapping[str, float]) -> list[list[str]]:
    """The envelopes' trials: all of ``trials``, then those of each σ (ascending)."""
    return [list(trials)] + [[t for t in trials if sigma_of[t] == s]
                             for s in _sigmas(trials, sigma_of)]


def _best(curves: Mapping[str, np.ndarray], members: Sequence[str]) -> np.ndarray:
    """The envelope (common.envelope.best_values) of the curves of ``members``."""
    return envelope.best_values(np.column_stack([curves[t] for t in members]))


def winners(full: Mapping[str, pd.DataFrame], sigma_of: Mapping[str, float],
            radii: Sequence[float]) -> list[str]:
    """The trials that win the plain-max envelope of certified accuracy at some radius of
    ``radii``, overall or among the trials of their σ, under common.envelope's tie rule
    (higher clean accuracy on the same rows, then the earlier name): the trials the analysis's
    envelope (analysis.curves) chooses there on these images. Radii where the envelope is 0
    (or no trial has rows) pick nobody. In the order of ``full``."""
    grid = np.concatenate([[0.0], np.asarray(radii, dtype=float)])
    curves = {t: certified_accuracy(rows["radius"].to_numpy(dtype=float), right_rows(rows), grid)
              for t, rows in full.items()}
    chosen: set[str] = set()
    for members in _groups(curves, sigma_of) if curves else []:
        table = np.column_stack([curves[t][1:] for t in members])
        won = envelope.winners(table, members, [curves[t][0] for t in members])
        positive = envelope.best_values(table) > 0
        chosen |= {members[j] for j in won[positive & (won != envelope.NONE)]}
    return [t for t in full if t in chosen]
