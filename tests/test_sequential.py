"""Sequential CERTIFY (``certify --sequential [--target-radius R]``) on closed-form classifiers.

On LinearBinary (conftest) pA = Φ(margin/σ) and the true ℓ2 radius is |margin|, so a reported
radius can be checked against the truth. Statistical assertions fail by chance with probability
below 1e-4 when the implementation is right (bounds from scipy.stats.binom).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy.stats import binom
from smoothadv.certify.runner import CERTIFY_COLUMNS, image_seed, run_smoothing
from smoothadv.certify.smooth import (
    ABSTAIN,
    Smooth,
    clopper_pearson_lower,
    least_certified_count,
    sequential_looks,
)
from smoothadv.cli.main import main
from smoothadv.common.errors import UserError
from smoothadv.common.layout import meta_path
from smoothadv.common.settings import Sampling

SIGMA = 0.5
N0, N = 32, 6400  # looks at 100, 400, 1,600 and 6,400 samples


def point_at(model, margin: float) -> torch.Tensor:
    """An input at signed distance ``margin`` from the hyperplane."""
    return margin * model.linear.weight.detach().view(1, 2, 4)


def smooth(model, seed: int = 0) -> Smooth:
    return Smooth(model, 2, SIGMA, generator=torch.Generator().manual_seed(seed))


class Votes(torch.nn.Module):
    """A base classifier voting a fixed script (0/1), in the order CERTIFY draws samples."""

    def __init__(self, script: list[int]):
        super().__init__()
        self.script = torch.tensor(script)
        self.position = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        votes = self.script[self.position:self.position + len(x)]
        self.position += len(x)
        return torch.nn.functional.one_hot(votes, 2).float()


def test_looks_are_geometric_and_end_at_n():
    assert sequential_looks(N) == [100, 400, 1600, 6400]
    assert sequential_looks(100_000) == [1563, 6250, 25_000, 100_000]
    assert sequential_looks(1000) == [250, 1000]
    assert sequential_looks(7) == [7]


def test_reported_radii_are_sound_with_alpha_split_over_the_looks(linear_classifier):
    """Each reported radius exceeds the true radius |margin| with probability ≤ α (α/K per
    look, union bound), so the count of violations is stochastically below Binomial(N, α).
    The points lie just beyond R, where a look's overestimate makes it stop, the hardest case;
    α = 0.2 makes violations frequent enough that spending α at each look (instead of α/K) is
    caught: it gives ≈ 0.33 violations per point against the bound's ≈ 0.26."""
    alpha, radius_r, n_points = 0.2, 0.25, 600
    rng = np.random.default_rng(0)
    s = smooth(linear_classifier, seed=1)
    violations = certified = 0
    for margin in rng.uniform(radius_r, radius_r + 0.04, n_points):
        prediction, radius, _, _ = s.certify_sequential(
            point_at(linear_classifier, margin), N0, N, alpha, N, label=1,
            target_radius=radius_r)
        if prediction != ABSTAIN:
            certified += 1
            violations += prediction != 1 or radius > margin
    bound = binom.ppf(1 - 1e-4, n_points, alpha)
    print(f"violations {violations}/{n_points} = {violations / n_points:.3f}, α = {alpha}, "
          f"bound {bound:.0f}")
    assert violations <= bound
    assert certified > 0.9 * n_points  # not passed by abstaining


def test_wrong_top_class_stops_after_n0(linear_classifier):
    s, x = smooth(linear_classifier), point_at(linear_classifier, 1.0)
    assert s.certify_sequential(x, N0, N, 0.001, 1000, label=0) == (1, 0.0, 0.0, N0)
    prediction, radius, _, samples = s.certify_sequential(x, N0, N, 0.001, 1000, label=1)
    assert (prediction, samples) == (1, N0 + N) and radius > 0.5


@pytest.mark.parametrize("alpha", [0.001, 0.05])
def test_abstain_certain_stops_exactly_when_the_last_look_cannot_pass(alpha):
    """ĉ-votes come last: with n* of them (the least the last look certifies) sampling never
    stops and CERTIFY certifies; with n* − 1 it stops as soon as n − n* + 1 other votes are in,
    and Cohen's CERTIFY on the same votes abstains too."""
    n = 1000
    n_star = least_certified_count(n, alpha)
    assert clopper_pearson_lower(n_star, n, alpha) >= 0.5 > clopper_pearson_lower(
        n_star - 1, n, alpha)
    x = torch.zeros(1, 2, 4)
    for n_a in (n_star, n_star - 1):
        script = [1] * N0 + [0] * (n - n_a) + [1] * n_a
        prediction, _, _, samples = Smooth(Votes(script), 2, SIGMA).certify_sequential(
            x, N0, n, alpha, 1)
        cohen, _, _ = Smooth(Votes(script), 2, SIGMA).certify_with_bound(x, N0, n, alpha, 1)
        if n_a == n_star:
            assert (prediction, samples) == (1, N0 + n) and cohen == 1
        else:
            assert (prediction, samples) == (ABSTAIN, N0 + n - n_star + 1) and cohen == ABSTAIN


def test_abstain_certain_never_stops_a_point_that_passes(linear_classifier):
    s = smooth(linear_classifier)
    for seed in range(20):  # pA = Φ(0.4) ≈ 0.66: certified at n = 6,400 whp
        s.generator.manual_seed(seed)
        prediction, _, _, samples = s.certify_sequential(
            point_at(linear_classifier, 0.2), N0, N, 0.001, 1000)
        assert (prediction, samples) == (1, N0 + N)
    # on the boundary (pA = 1/2, no label): stops, if at all, only as an abstention
    for seed in range(20):
        s.generator.manual_seed(seed)
        prediction, radius, _, samples = s.certify_sequential(
            point_at(linear_classifier, 0.0), N0, N, 0.001, 100)
        assert samples == N0 + N or (prediction, radius) == (ABSTAIN, 0.0)


def test_target_radius_stops_a_far_point_at_the_first_look(linear_classifier):
    s, x = smooth(linear_classifier), point_at(linear_classifier, 2.0)
    prediction, radius, p_a_lower, samples = s.certify_sequential(
        x, N0, N, 0.001, 1000, label=1, target_radius=0.25)
    assert (prediction, samples) == (1, N0 + 100) and radius >= 0.25
    assert p_a_lower == clopper_pearson_lower(100, 100, 0.001 / 4)
    # without R, or with R beyond what any look certifies, it draws all n
    assert s.certify_sequential(x, N0, N, 0.001, 1000, label=1)[3] == N0 + N
    assert s.certify_sequential(x, N0, N, 0.001, 1000, label=1, target_radius=5.0)[3] == N0 + N
    # a point whose true radius is below R is never stopped by (c)
    near = point_at(linear_classifier, 0.15)
    assert s.certify_sequential(near, N0, N, 0.001, 1000, label=1,
                                target_radius=0.25)[3] == N0 + N


def test_passes_saved_on_a_mixed_population(linear_classifier):
    """Margins uniform in (−1, 2) against label 1: a third are misclassified (stop after n0),
    most of the rest reach R = 0.5 at an early look."""
    rng = np.random.default_rng(2)
    s = smooth(linear_classifier, seed=3)
    margins = rng.uniform(-1.0, 2.0, 200)
    used = sum(s.certify_sequential(point_at(linear_classifier, m), N0, N, 0.001, N, label=1,
                                    target_radius=0.5)[3] for m in margins)
    saved = 1 - used / (len(margins) * (N0 + N))
    print(f"passes saved: {saved:.1%} of {len(margins) * (N0 + N)} noisy samples")
    assert saved > 0.5


def dataset(model, margins, labels):
    return [(point_at(model, m), y) for m, y in zip(margins, labels, strict=True)]


def test_rows_have_samples_and_resume_refuses_mixing_modes(linear_classifier, tmp_path):
    data = dataset(linear_classifier, [2.0, -1.0, 0.3, 0.0], [1, 1, 1, 0])
    plain = Sampling(sigma=SIGMA, n0=N0, n=N, alpha=0.001, seed=4)
    sequential = Sampling(sigma=SIGMA, n0=N0, n=N, alpha=0.001, seed=4, sequential=True,
                          target_radius=0.5)
    seq_out, plain_out = tmp_path / "seq.tsv", tmp_path / "plain.tsv"
    run_smoothing(linear_classifier, 2, data, range(4), sequential, seq_out, progress=False)
    header, *rows = seq_out.read_text().splitlines()
    assert header.split("\t") == [*CERTIFY_COLUMNS, "samples"]
    samples = [int(r.split("\t")[-1]) for r in rows]
    assert samples[0] == N0 + 100 and samples[1] == N0 and samples[2] == N0 + N
    record = json.loads(meta_path(seq_out).read_text())
    assert record["sequential"] is True and record["target_radius"] == 0.5
    run_smoothing(linear_classifier, 2, data, range(4), plain, plain_out, progress=False)
    record = json.loads(meta_path(plain_out).read_text())
    assert record["sequential"] is False and record["target_radius"] is None
    other_r = Sampling(sigma=SIGMA, n0=N0, n=N, alpha=0.001, seed=4, sequential=True)
    for settings, out in ((sequential, plain_out), (plain, seq_out), (other_r, seq_out)):
        with pytest.raises(UserError) as refused:
            run_smoothing(linear_classifier, 2, data, range(4), settings, out, progress=False)
        message = str(refused.value)
        assert "\n" not in message and "was written with" in message
        assert ("target_radius=" if settings is other_r else "sequential=") in message


def test_without_sequential_rows_are_cohens_certify(linear_classifier, tmp_path):
    """Default rows are those of the pre-existing CERTIFY path, column for column."""
    data = dataset(linear_classifier, [2.0, -1.0, 0.3, 0.0], [1, 1, 1, 0])
    sampling = Sampling(sigma=SIGMA, n0=N0, n=N, alpha=0.001, seed=4)
    out = tmp_path / "plain.tsv"
    run_smoothing(linear_classifier, 2, data, range(4), sampling, out, progress=False,
                  batch_size=400)
    header, *rows = out.read_text().splitlines()
    assert header.split("\t") == list(CERTIFY_COLUMNS)
    s = smooth(linear_classifier)
    for idx, (row, (x, label)) in enumerate(zip(rows, data, strict=True)):
        s.generator.manual_seed(image_seed(4, idx))
        prediction, radius, p_a_lower = s.certify_with_bound(x, N0, N, 0.001, 400)
        fields = row.split("\t")
        expected = [str(idx), str(label), str(prediction), repr(radius),
                    str(int(prediction == label)), fields[5], repr(p_a_lower)]
        assert fields == expected


def test_cli_sequential_and_refusals(synthetic_checkpoint, tmp_path, capsys):
    out = tmp_path / "seq.tsv"
    args = ["certify", str(synthetic_checkpoint), "--sigma", "0.25", "--n0", "20", "--n", "800",
            "--alpha", "0.01", "--batch", "100", "--skip", "64", "--device", "cpu",
            "--no-progress", "--out", str(out)]
    assert main([*args, "--sequential", "--target-radius", "0.25"]) == 0
    header, *rows = out.read_text().splitlines()
    assert header.endswith("\tsamples") and rows
    assert all(20 <= int(r.split("\t")[-1]) <= 820 for r in rows)
    assert main([*args, "--sequential"]) == 2  # another target radius: refused
    assert main(args) == 2  # without --sequential: refused
    assert main([*args[:-1], str(tmp_path / "x.tsv"), "--target-radius", "0.25"]) == 2
    err = capsys.readouterr().err
    assert "target_radius" in err and "only with sequential" in err
