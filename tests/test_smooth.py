"""CERTIFY and PREDICT against a linear base classifier, where pA = Φ(margin/σ) is exact.

Tolerances: every statistical assertion fails by chance with probability below 1e-4 when the
implementation is right (bounds from scipy.stats.binom), while the bugs they guard against
(two-sided instead of one-sided bounds, the point estimate instead of the lower bound, counts
from the wrong draw) move the statistic far past them.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import beta, binom, norm
from smoothadv.certify import ABSTAIN, Smooth, clopper_pearson_lower
from smoothadv.certify.smooth import batch_for

SIGMA = 0.5


def point_at(model, margin: float) -> torch.Tensor:
    """An input at signed distance ``margin`` from the hyperplane."""
    w = model.linear.weight.detach().view(1, 2, 4)
    return margin * w


@pytest.mark.parametrize("k,n,alpha", [(0, 10, 0.05), (10, 10, 0.05), (73, 100, 0.001),
                                       (99_950, 100_000, 0.001), (500, 1000, 0.01)])
def test_clopper_pearson_lower_is_the_beta_quantile(k, n, alpha):
    expected = 0.0 if k == 0 else beta.ppf(alpha, k, n - k + 1)
    assert clopper_pearson_lower(k, n, alpha) == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_clopper_pearson_lower_all_successes_closed_form():
    # With k = n the bound solves p^n = α.
    assert clopper_pearson_lower(50, 50, 0.01) == pytest.approx(0.01 ** (1 / 50), rel=1e-9)


def test_sample_counts_total_and_batches_that_do_not_divide(linear_classifier):
    smooth = Smooth(linear_classifier, 2, SIGMA, generator=torch.Generator().manual_seed(0))
    x = point_at(linear_classifier, 0.3)
    for num, batch in [(1, 7), (10, 3), (1000, 333), (1000, 1000), (5, 400)]:
        counts = smooth.sample_counts(x, num, batch)
        assert counts.dtype == torch.int64 and counts.shape == (2,)
        assert int(counts.sum()) == num


def test_generator_makes_counts_reproducible_and_batching_irrelevant(linear_classifier):
    x = point_at(linear_classifier, 0.1)
    runs = []
    for batch in (100, 100, 1000, 334):
        smooth = Smooth(linear_classifier, 2, SIGMA, generator=torch.Generator().manual_seed(7))
        runs.append(smooth.sample_counts(x, 1000, batch).tolist())
    # Same seed, same counts, whatever the batch size, as long as each batch holds a multiple
    # of 16 numbers (torch fills normals 16 at a time; every image size here, 28², 3·32²,
    # 3·224², is one). This 8-pixel input needs even batches.
    assert runs[0] == runs[1] == runs[2] == runs[3]
    other = Smooth(linear_classifier, 2, SIGMA, generator=torch.Generator().manual_seed(8))
    assert other.sample_counts(x, 1000, 100).tolist() != runs[0]


class RunsOutOfMemory(torch.nn.Module):
    """A GPU stand-in: ``inner`` on batches of at most ``fits`` samples, out of memory above."""

    def __init__(self, inner: torch.nn.Module, fits: int):
        super().__init__()
        self.inner, self.fits, self.sizes = inner, fits, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.sizes.append(len(x))
        if len(x) > self.fits:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return self.inner(x)


def test_a_batch_out_of_memory_is_halved_until_it_fits_and_stays_halved(linear_classifier):
    model = RunsOutOfMemory(linear_classifier, fits=64)
    smooth = Smooth(model, 2, SIGMA, generator=torch.Generator().manual_seed(0))
    x = point_at(linear_classifier, 0.5)
    counts = smooth.sample_counts(x, 1000, 400)
    assert int(counts.sum()) == 1000  # only completed batches count, every sample once
    assert model.sizes[:4] == [400, 200, 100, 50] and smooth.batch_cap == 50
    assert max(model.sizes[3:]) == 50
    model.sizes.clear()
    prediction, radius = smooth.certify(x, 100, 1000, 0.001, 400)  # later calls start at 50
    assert max(model.sizes) == 50 and prediction == 1 and radius > 0
    # the counts follow Φ(margin/σ) as without the out-of-memory batches (±5 s.d.)
    p = norm.cdf(0.5 / SIGMA)
    assert abs(int(counts[1]) - 1000 * p) <= 5 * np.sqrt(1000 * p * (1 - p))
    tiny = Smooth(RunsOutOfMemory(linear_classifier, fits=0), 2, SIGMA)
    with pytest.raises(torch.OutOfMemoryError):  # not even one sample fits: the error stands
        tiny.sample_counts(x, 10, 4)


def test_the_default_batch_is_cohens_400_on_the_cpu_and_larger_on_cuda():
    assert batch_for(None, torch.device("cpu")) == 400
    assert batch_for(None, torch.device("cuda")) == 4096
    assert batch_for(123, torch.device("cuda")) == 123


def test_counts_follow_phi_of_margin_over_sigma(linear_classifier):
    # nA ~ Binomial(n, Φ(m/σ)); check it lies inside its central 1 − 1e-5 interval.
    smooth = Smooth(linear_classifier, 2, SIGMA, generator=torch.Generator().manual_seed(1))
    n = 20_000
    for margin in (-0.4, 0.0, 0.25, 0.9):
        p = norm.cdf(margin / SIGMA)
        count = int(smooth.sample_counts(point_at(linear_classifier, margin), n, 5000)[1])
        assert binom.ppf(5e-6, n, p) <= count <= binom.ppf(1 - 5e-6, n, p)


def test_certify_is_sound_on_many_points(linear_classifier):
    """A certificate (ĉ, R) is wrong if ĉ is not the true class or R exceeds the true radius
    |margin|; each happens with probability ≤ α, so over N points their number is stochastically
    below Binomial(N, α)."""
    alpha, n_points = 0.01, 1000
    rng = np.random.default_rng(0)
    smooth = Smooth(linear_classifier, 2, SIGMA, generator=torch.Generator().manual_seed(0))
    wrong, radii = 0, []
    for margin in rng.uniform(-1.5, 1.5, n_points):
        prediction, radius = smooth.certify(point_at(linear_classifier, margin), 50, 1000,
                                            alpha, 1050)
        if prediction == ABSTAIN:
            continue
        radii.append(radius)
        wrong += prediction != int(margin > 0) or radius > abs(margin)
    assert wrong <= binom.ppf(1 - 1e-4, n_points, alpha)
    assert len(radii) > 0.7 * n_points  # the test above is not passed by abstaining everywhere


def expected_radius(p_a: float, n: int, alpha: float) -> tuple[float, float]:
    """Exact mean and standard deviation of CERTIFY's radius when ĉ is right:
    σ·Φ⁻¹(CP_lower(nA)) when that bound is ≥ 1/2, else 0, with nA ~ Binomial(n, pA)."""
    k = np.arange(n + 1)
    lower = np.where(k > 0, beta.ppf(alpha, np.maximum(k, 1), n - k + 1), 0.0)
    radius = np.where(lower >= 0.5, SIGMA * norm.ppf(np.clip(lower, 0.5, 1.0)), 0.0)
    pmf = binom.pmf(k, n, p_a)
    mean = float((pmf * radius).sum())
    return mean, float(np.sqrt((pmf * (radius - mean) ** 2).sum()))


class Scripted(torch.nn.Module):
    """A base classifier whose predictions are a fixed script, in the order CERTIFY draws its
    samples: ``n0`` votes for class 1 (so ĉ = 1), then ``n_a`` of the ``n`` for class 1."""

    def __init__(self, n0: int, n: int, n_a: int):
        super().__init__()
        self.script = torch.tensor([1] * n0 + [1] * n_a + [0] * (n - n_a))
        self.position = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        votes = self.script[self.position:self.position + len(x)]
        self.position += len(x)
        return torch.nn.functional.one_hot(votes, 2).float()


@pytest.mark.parametrize("n_a,n,alpha", [(990, 1000, 0.001), (600, 1000, 0.01),
                                         (99_990, 100_000, 0.001), (540, 1000, 0.05),
                                         (510, 1000, 0.001)])
def test_radius_is_sigma_phi_inverse_of_the_one_sided_bound_exactly(n_a, n, alpha):
    """Given nA, CERTIFY's radius is σ·Φ⁻¹ of the one-sided (1 − α) Clopper–Pearson bound,
    Beta(α; nA, n − nA + 1), and it abstains when that bound is below 1/2: exactly, so a
    two-sided bound (at α or 2α) or the point estimate fails here."""
    n0 = 100
    smooth = Smooth(Scripted(n0, n, n_a), 2, SIGMA)
    prediction, radius = smooth.certify(torch.zeros(1, 2, 4), n0, n, alpha, batch_size=64)
    lower = beta.ppf(alpha, n_a, n - n_a + 1)
    if lower < 0.5:
        assert (prediction, radius) == (ABSTAIN, 0.0)
    else:
        assert prediction == 1
        assert radius == pytest.approx(SIGMA * norm.ppf(lower), rel=1e-9)


@pytest.mark.parametrize("margin", [0.5, 1.0])
def test_certified_radius_matches_clopper_pearson_expectation(linear_classifier, margin):
    n, alpha, repeats = 1000, 0.001, 300
    smooth = Smooth(linear_classifier, 2, SIGMA, generator=torch.Generator().manual_seed(3))
    x = point_at(linear_classifier, margin)
    radii = [smooth.certify(x, 100, n, alpha, n)[1] for _ in range(repeats)]
    mean, sd = expected_radius(norm.cdf(margin / SIGMA), n, alpha)
    # |z| > 4.4 has probability 1e-5 under the CLT; the mean is far from any plausible bug.
    assert abs(np.mean(radii) - mean) <= 4.4 * sd / np.sqrt(repeats)
    assert mean < margin  # the bound is conservative: certified below the true radius


def test_predict_returns_true_class_or_abstains(linear_classifier):
    alpha, n_points = 0.001, 300
    rng = np.random.default_rng(1)
    smooth = Smooth(linear_classifier, 2, SIGMA, generator=torch.Generator().manual_seed(1))
    wrong = answered = 0
    for margin in rng.uniform(-1.0, 1.0, n_points):
        prediction = smooth.predict(point_at(linear_classifier, margin), 500, alpha, 500)
        if prediction != ABSTAIN:
            answered += 1
            wrong += prediction != int(margin > 0)
    assert wrong <= binom.ppf(1 - 1e-4, n_points, alpha)
    assert answered > 0.6 * n_points


def test_abstains_on_the_decision_boundary(linear_classifier):
    """At pA = 1/2 exactly, CERTIFY abstains unless pA_lower ≥ 1/2 and PREDICT abstains unless
    the binomial test rejects: each of these errors has probability ≤ α."""
    alpha, trials = 0.001, 60
    smooth = Smooth(linear_classifier, 2, SIGMA, generator=torch.Generator().manual_seed(2))
    x = point_at(linear_classifier, 0.0)
    certified = sum(smooth.certify(x, 100, 2000, alpha, 2000)[0] != ABSTAIN for _ in range(trials))
    predicted = sum(smooth.predict(x, 2000, alpha, 2000) != ABSTAIN for _ in range(trials))
    bound = binom.ppf(1 - 1e-4, trials, alpha)
    assert certified <= bound and predicted <= bound


def test_far_point_gets_the_largest_radius(linear_classifier):
    # nA = n for a point 10σ away: pA_lower = α^(1/n), radius σ·Φ⁻¹(α^(1/n)) (≈ 3.8σ at n=1e5).
    n, alpha = 100_000, 0.001
    smooth = Smooth(linear_classifier, 2, SIGMA, generator=torch.Generator().manual_seed(4))
    prediction, radius = smooth.certify(point_at(linear_classifier, 10 * SIGMA), 100, n, alpha,
                                        25_000)
    assert prediction == 1
    assert radius == pytest.approx(SIGMA * norm.ppf(alpha ** (1 / n)), rel=1e-9)
    assert radius == pytest.approx(3.8 * SIGMA, abs=0.05)


def test_sigma_must_be_positive(linear_classifier):
    with pytest.raises(ValueError, match="sigma"):
        Smooth(linear_classifier, 2, 0.0)
