"""common.binomial, the one Clopper–Pearson implementation: it agrees with the scalar form
CERTIFY used before (scipy's binomtest exact interval, a root search) to 1e-12 on a grid of
(k, n, α), is bit for bit Cohen et al.'s formula, and leaves the sequential CERTIFY's least
certifying counts where they were."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import beta, binomtest
from smoothadv.certify.smooth import clopper_pearson_lower, least_certified_count
from smoothadv.common.binomial import cp_lower, cp_upper

NS = (1, 2, 3, 10, 24, 100, 500, 1_000, 1_563, 6_250, 10_000, 25_000, 100_000)
ALPHAS = (0.2, 0.05, 0.01, 0.001, 0.001 / 4, 1e-5)


def counts(n: int) -> np.ndarray:
    rng = np.random.default_rng(n)
    edges = [0, 1, 2, n // 2, n - 1, n]
    return np.unique(np.clip([*edges, *rng.integers(0, n + 1, 12)], 0, n))


def old_scalar(k: int, n: int, alpha: float) -> float:
    """certify.smooth.clopper_pearson_lower as it was."""
    return float(binomtest(int(k), n).proportion_ci(1 - 2 * alpha, method="exact").low)


def old_upper(k: int, n: int, alpha: float) -> float:
    return float(binomtest(int(k), n).proportion_ci(1 - 2 * alpha, method="exact").high)


@pytest.mark.parametrize("n", NS)
def test_the_vectorized_bounds_agree_with_the_old_scalar_form(n):
    for alpha in ALPHAS:
        k = counts(n)
        np.testing.assert_allclose(cp_lower(k, n, alpha),
                                   [old_scalar(j, n, alpha) for j in k], rtol=0, atol=1e-12)
        np.testing.assert_allclose(cp_upper(k, n, alpha),
                                   [old_upper(j, n, alpha) for j in k], rtol=0, atol=1e-12)
        assert [clopper_pearson_lower(int(j), n, alpha) for j in k] == cp_lower(
            k, n, alpha).tolist()


@pytest.mark.parametrize("n", NS)
def test_the_lower_bound_is_cohens_formula_bit_for_bit(n):
    """Cohen et al.: proportion_confint(k, n, alpha=2α, method="beta")[0], which statsmodels
    computes as beta.ppf(2α / 2, k, n − k + 1) (0 at k = 0)."""
    for alpha in ALPHAS:
        k = counts(n)
        cohen = [0.0 if j == 0 else beta.ppf(2 * alpha / 2, j, n - j + 1) for j in k]
        assert cp_lower(k, n, alpha).tolist() == cohen


def test_edges_and_symmetry():
    n, alpha = 50, 0.01
    assert cp_lower(0, n, alpha) == 0.0 and cp_upper(n, n, alpha) == 1.0
    assert cp_lower(n, n, alpha) == pytest.approx(alpha ** (1 / n), rel=1e-12)
    k = np.arange(n + 1)
    np.testing.assert_allclose(cp_upper(k, n, alpha), 1 - cp_lower(n - k, n, alpha), atol=1e-12)
    assert np.all(np.diff(cp_lower(k, n, alpha)) > 0)


@pytest.mark.parametrize("n", (100, 1_563, 6_250, 25_000, 100_000))
@pytest.mark.parametrize("alpha", (0.001, 0.001 / 4, 0.05))
def test_the_least_certifying_count_is_unchanged(n, alpha):
    """n* (sequential CERTIFY's abstention rule) is still the least count that the old
    scalar bound certified."""
    n_star = least_certified_count(n, alpha)
    assert old_scalar(n_star, n, alpha) >= 0.5 > old_scalar(n_star - 1, n, alpha)
