"""Cohen et al.'s smoothed classifier g(x) = argmax_c P(f(x + δ) = c), δ ~ N(0, σ²I).

CERTIFY and PREDICT exactly as in Cohen, Rosenfeld & Kolter (2019), Algorithms "certify" and
"predict" (REFERENCE.md). Noise is drawn on the evaluation device (given, else the input's) and
class counts accumulate there; the only host synchronisation is one transfer of the count vector
per call. The base classifier is any module, with or without parameters.
"""

from __future__ import annotations

import torch
from scipy.stats import binomtest, norm
from torch import nn

ABSTAIN = -1


def clopper_pearson_lower(n_success: int, n_total: int, alpha: float) -> float:
    """One-sided (1 − α) lower confidence bound on a binomial proportion (Clopper–Pearson).

    Equals the lower end of the two-sided exact interval at level 1 − 2α, which is what Cohen's
    code computes with ``proportion_confint(method="beta", alpha=2α)``.
    """
    return float(binomtest(n_success, n_total).proportion_ci(1 - 2 * alpha, method="exact").low)


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
        of ``x`` (C×H×W) plus fresh N(0, σ²I) noise, evaluated ``batch_size`` at a time."""
        device = self.device if self.device is not None else x.device
        x = x.to(device)
        counts = torch.zeros(self.num_classes, dtype=torch.int64, device=device)
        noise = torch.empty((min(batch_size, num), *x.shape), device=device)
        remaining = num
        while remaining > 0:
            b = min(batch_size, remaining)
            batch = noise[:b].normal_(0.0, self.sigma, generator=self.generator).add_(x)
            predictions = self.base_classifier(batch).argmax(1)
            counts += torch.bincount(predictions, minlength=self.num_classes)
            remaining -= b
        return counts.cpu()
