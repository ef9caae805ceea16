"""Cohen et al.'s smoothed classifier g(x) = argmax_c P(f(x + δ) = c), δ ~ N(0, σ²I).

CERTIFY and PREDICT exactly as in Cohen, Rosenfeld & Kolter (2019): the paper's pseudocode
"certify" and "predict" and its reference implementation (locuslab/smoothing, code/core.py).
Noise is drawn on the evaluation device (given, else the input's) and class counts accumulate
there; the only host synchronisation is one transfer of the count vector per call. The base
classifier is any module, with or without parameters.
"""

from __future__ import annotations

import functools

import torch
from scipy.stats import binomtest, norm
from smoothadv.common.binomial import cp_lower
from torch import nn

ABSTAIN = -1
# Noisy samples per forward pass when none is given: Cohen et al.'s 400 on the CPU; on CUDA
# 4,096, which keeps a large GPU busy on CIFAR-10 models. A batch that runs out of GPU memory
# is halved until it fits (Smooth.sample_counts).
DEFAULT_BATCH = {"cpu": 400, "cuda": 4096}


def batch_for(batch_size: int | None, device: torch.device) -> int:
    """``batch_size``, or by default DEFAULT_BATCH for ``device``'s type (400 elsewhere)."""
    return batch_size if batch_size is not None else DEFAULT_BATCH.get(device.type, 400)


def clopper_pearson_lower(n_success: int, n_total: int, alpha: float) -> float:
    """One-sided (1 − α) lower confidence bound on a binomial proportion (Clopper–Pearson), one
    count at a time: common.binomial.cp_lower, to the bit what Cohen's code computes with
    ``proportion_confint(method="beta", alpha=2α)``."""
    return float(cp_lower(n_success, n_total, alpha))


def sequential_looks(n: int, max_looks: int = 4, ratio: int = 4, first: int = 100
                     ) -> list[int]:
    """The looks n_1 < … < n_K = n of sequential CERTIFY: ⌈n/ratio^j⌉ for j = max_looks − 1,
    …, 0, keeping those ≥ min(first, n) (n = 100,000: 1,563, 6,250, 25,000, 100,000)."""
    return sorted({-(-n // ratio**j) for j in range(max_looks)
                   if -(-n // ratio**j) >= min(first, n)})


@functools.lru_cache(maxsize=64)
def least_certified_count(n: int, alpha: float) -> int:
    """n*: the least count k with CP_lower(k, n; α) ≥ 1/2 (n + 1 when none), by bisection
    (the bound increases with k)."""
    low, high = 0, n + 1
    while low < high:
        mid = (low + high) // 2
        if mid <= n and clopper_pearson_lower(mid, n, alpha) >= 0.5:
            high = mid
        else:
            low = mid + 1
    return low


class Smooth:
    """A smoothed classifier around ``base_classifier`` (a model taking [0,1] pixels, already in
    eval mode) evaluated on ``device`` (None: the input's device); ``generator`` (on that
    device) makes the noise reproducible."""

    ABSTAIN = ABSTAIN

    def __init__(self, base_classifier: nn.Module, num_classes: int, sigma: float,
                 generator: torch.Generator | None = None,
                 device: str | torch.device | None = None):
        if sigma <= 0:
            raise ValueError(f"sigma must be positive, got {sigma}")
        self.base_classifier = base_classifier
        self.num_classes = num_classes
        self.sigma = sigma
        self.generator = generator
        self.device = torch.device(device) if device is not None else None
        self.batch_cap: int | None = None  # set once a batch ran out of memory (halved)

    def certify(self, x: torch.Tensor, n0: int, n: int, alpha: float, batch_size: int
                ) -> tuple[int, float]:
        """CERTIFY: (ĉ, σ·Φ⁻¹(pA_lower)) with probability ≥ 1 − α correct, or (ABSTAIN, 0.0).

        ĉ is the top class among ``n0`` noisy samples; pA_lower is the one-sided Clopper–Pearson
        bound on its frequency among ``n`` fresh samples.
        """
        prediction, radius, _ = self.certify_with_bound(x, n0, n, alpha, batch_size)
        return prediction, radius

    def certify_with_bound(self, x: torch.Tensor, n0: int, n: int, alpha: float,
                           batch_size: int) -> tuple[int, float, float]:
        """CERTIFY, also returning pA_lower (the output file's extra column)."""
        c_hat = int(self.sample_counts(x, n0, batch_size).argmax())
        n_a = int(self.sample_counts(x, n, batch_size)[c_hat])
        p_a_lower = clopper_pearson_lower(n_a, n, alpha)
        if p_a_lower < 0.5:
            return ABSTAIN, 0.0, p_a_lower
        return c_hat, self.sigma * float(norm.ppf(p_a_lower)), p_a_lower

    def certify_sequential(self, x: torch.Tensor, n0: int, n: int, alpha: float,
                           batch_size: int, label: int | None = None,
                           target_radius: float | None = None
                           ) -> tuple[int, float, float, int]:
        """CERTIFY with the ``n`` estimation samples drawn in stages, stopping an image early
        when its answer is decided. Returns (prediction, radius, pA_lower, samples), samples
        counting every noisy sample drawn for ``x`` (n0 included).

        Cohen et al. (2019) CERTIFY draws n0 samples to choose ĉ = cA, then n fresh samples,
        nA of them ĉ, and reports (ĉ, σ·Φ⁻¹(p̲)) when p̲ = CP_lower(nA, n; α) ≥ 1/2, where
        CP_lower is the one-sided Clopper–Pearson bound (:func:`clopper_pearson_lower`), else
        abstains. Here the n samples are drawn ``batch_size`` at a time, with looks at
        n_1 < … < n_K = n (:func:`sequential_looks`: n_k = ⌈n/4^(K−k)⌉, K ≤ 4, looks below
        100 samples dropped; n = 100,000: 1,563, 6,250, 25,000, 100,000). With nA_d ĉ-votes
        among the d samples drawn so far, sampling stops when

        (a) ``label`` is given and ĉ ≠ label (checked before any of the n samples): the row
            cannot be correct whatever its radius. It records prediction ĉ, radius 0, pA_lower
            0, correct 0 (whether CERTIFY would have abstained on it is not measured, so the
            abstention count of such rows is not Cohen's);
        (b) abstention is certain, checked after every batch: even if all n − d remaining
            samples voted ĉ, the final bound CP_lower(nA_d + n − d, n; α_K) would stay below
            1/2, i.e. nA_d + n − d < n*, the least count the last look certifies. The last
            look's outcome is already fixed (abstain), so this spends no α; the row is
            (ABSTAIN, 0, CP_lower(nA_d, d; α_K)). It saves samples only where ĉ's probability
            is well below 1/2 (pA = 0.3 stops near d ≈ 0.71 n; pA = 1/2 near d ≈ n − z√n);
        (c) only with ``target_radius`` R, at a look n_k, k < K: p̲_k = CP_lower(nA_k, n_k; α_K)
            ≥ 1/2 and σ·Φ⁻¹(p̲_k) ≥ R; the row is (ĉ, σ·Φ⁻¹(p̲_k), p̲_k).

        Otherwise the last look decides as CERTIFY does, with α_K. Without ``target_radius``
        only (a) and (b) stop early, neither spends α, and α_K = α: a row is CERTIFY's own
        (under (a), wrong in both). With it, any look may report a bound, so α_K = α/K at
        every look, the last one included: by the union bound the probability that some
        look's bound exceeds the true pA is ≤ K·α/K = α, so every reported radius holds with
        probability ≥ 1 − α.
        """
        c_hat = int(self.sample_counts(x, n0, batch_size).argmax())
        if label is not None and c_hat != label:
            return c_hat, 0.0, 0.0, n0
        looks = sequential_looks(n)
        alpha_look = alpha / len(looks) if target_radius is not None else alpha
        n_star = least_certified_count(n, alpha_look)
        n_a = drawn = 0
        for look in looks:
            while drawn < look:
                step = min(batch_size, look - drawn)
                n_a += int(self.sample_counts(x, step, batch_size)[c_hat])
                drawn += step
                if n_a + n - drawn < n_star:
                    return ABSTAIN, 0.0, clopper_pearson_lower(n_a, drawn, alpha_look), n0 + drawn
            if target_radius is not None and drawn < n:
                p_a_lower = clopper_pearson_lower(n_a, drawn, alpha_look)
                radius = self.sigma * float(norm.ppf(p_a_lower)) if p_a_lower >= 0.5 else 0.0
                if p_a_lower >= 0.5 and radius >= target_radius:
                    return c_hat, radius, p_a_lower, n0 + drawn
        p_a_lower = clopper_pearson_lower(n_a, n, alpha_look)
        if p_a_lower < 0.5:
            return ABSTAIN, 0.0, p_a_lower, n0 + n
        return c_hat, self.sigma * float(norm.ppf(p_a_lower)), p_a_lower, n0 + n

    def predict(self, x: torch.Tensor, n: int, alpha: float, batch_size: int) -> int:
        """PREDICT: the top class of ``n`` noisy samples, or ABSTAIN when the two-sided binomial
        test of its count nA against the runner-up's nB (at p = 1/2) has p-value > α."""
        counts = self.sample_counts(x, n, batch_size)
        top2 = torch.topk(counts, min(2, self.num_classes)).indices.tolist()
        n_a = int(counts[top2[0]])
        n_b = int(counts[top2[1]]) if len(top2) > 1 else 0
        if binomtest(n_a, n_a + n_b, p=0.5).pvalue > alpha:
            return ABSTAIN
        return top2[0]

    @torch.inference_mode()
    def sample_counts(self, x: torch.Tensor, num: int, batch_size: int) -> torch.Tensor:
        """Counts (on the host, int64, length num_classes) of f's predictions on ``num`` copies
        of ``x`` (C×H×W) plus fresh N(0, σ²I) noise, evaluated ``batch_size`` at a time.

        A batch that runs out of memory is dropped unseen and the batch halved, for this call
        and every later one (``batch_cap``): the counts hold only completed batches, each of
        independent fresh noise, so the sampling, and with it the guarantee, is unchanged."""
        device = self.device if self.device is not None else x.device
        x = x.to(device)
        counts = torch.zeros(self.num_classes, dtype=torch.int64, device=device)
        batch_size = min(batch_size, self.batch_cap or batch_size)
        noise = torch.empty((min(batch_size, num), *x.shape), device=device)
        remaining = num
        while remaining > 0:
            b = min(batch_size, remaining)
            try:
                batch = noise[:b].normal_(0.0, self.sigma, generator=self.generator).add_(x)
                predictions = self.base_classifier(batch).argmax(1)
            except torch.OutOfMemoryError:
                if batch_size == 1:
                    raise
                predictions = None  # (the failed pass's memory is freed once out of here)
            if predictions is None:
                batch_size = self.batch_cap = batch_size // 2
                noise = batch = None
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                noise = torch.empty((min(batch_size, num), *x.shape), device=device)
                continue
            counts += torch.bincount(predictions, minlength=self.num_classes)
            remaining -= b
        return counts.cpu()
