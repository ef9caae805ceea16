"""Clopper–Pearson (exact) confidence bounds on a binomial proportion: the one implementation,
vectorized, used by CERTIFY (certify.smooth.clopper_pearson_lower, its pA_lower) and by staged
certification (common.stage_selection).

The one-sided (1 − α) bounds from k successes of n trials are the α quantile of Beta(k, n − k + 1)
(lower; 0 at k = 0) and the 1 − α quantile of Beta(k + 1, n − k) (upper; 1 at k = n): the ends of
the two-sided exact interval at 1 − 2α. The lower one is, to the bit, what Cohen et al.'s
reference code computes, ``statsmodels proportion_confint(k, n, alpha=2α, method="beta")[0]``.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import beta as beta_dist


def cp_lower(k: np.ndarray | int, n: int, alpha: float) -> np.ndarray:
    """One-sided (1 − α) Clopper–Pearson lower bound on a proportion from k of n (0 at k = 0)."""
    k = np.asarray(k, dtype=float)
    with np.errstate(invalid="ignore"):
        out = beta_dist.ppf(alpha, k, n - k + 1)
    return np.where(k <= 0, 0.0, out)


def cp_upper(k: np.ndarray | int, n: int, alpha: float) -> np.ndarray:
    """One-sided (1 − α) Clopper–Pearson upper bound on a proportion from k of n (1 at k = n)."""
    k = np.asarray(k, dtype=float)
    with np.errstate(invalid="ignore"):
        out = beta_dist.ppf(1 - alpha, k + 1, n - k)
    return np.where(k >= n, 1.0, out)
