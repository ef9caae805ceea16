"""common.stage_selection: which trials stage 1 lets through, and which stage 3 re-certifies.

A synthetic sweep whose envelope is known (stage-1 rows built from chosen CERTIFY counts), a
near miss that only the upper bound keeps, the full-n subtlety (stage-1 radii are capped by n1),
winners with ties, and a simulation of whole populations whose true full-n curves are computed
exactly."""

from __future__ import annotations

import functools

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binom, binomtest, norm
from smoothadv.common import stage_selection as selection
from smoothadv.common.metrics import right_rows

N1, ALPHA1 = 10_000, 0.001  # stage 1 of the synthetic sweep (reaches 0.80 at σ = 0.25)
FULL_N, FULL_ALPHA = 100_000, 0.001  # full n: R_max = 0.95 at σ = 0.25, 1.91 at σ = 0.5
ALPHA = 0.001
RADII = (0.0, 0.25, 0.5, 0.75, 1.0)
M = 1000


@functools.lru_cache(maxsize=8)
def table(n: int, alpha: float) -> np.ndarray:
    return selection.cp_lower(np.arange(n + 1), n, alpha)


def count_for(p_lower: float, n: int = N1, alpha: float = ALPHA1) -> int:
    """The least count whose CP lower bound is ≥ p_lower (n when none is)."""
    return int(min(np.searchsorted(table(n, alpha), p_lower), n))


def make_rows(sigma: float, levels: dict[float, float], abstain: float = 0.0,
              wrong: float = 0.0, m: int = M, n: int = N1, alpha: float = ALPHA1
              ) -> pd.DataFrame:
    """m CERTIFY rows: for each stage-1 radius level ρ a fraction of right rows whose count is
    the least certifying ρ; abstentions with pA_lower ≈ 0.45, certified wrong rows with ≈ 0.9;
    the rest wrong, unlike CERTIFY, with pA_lower 0.9 too."""
    lows = []
    for level, fraction in levels.items():
        lows += [table(n, alpha)[count_for(norm.cdf(level / sigma), n, alpha)]] * round(
            fraction * m)
    right = len(lows)
    n_abstain = round(abstain * m)
    lows += [table(n, alpha)[count_for(0.45, n, alpha)]] * n_abstain
    lows += [table(n, alpha)[count_for(0.9, n, alpha)]] * (m - len(lows))
    lows = np.asarray(lows)
    kind = np.array(["right"] * right + ["abstain"] * n_abstain + ["wrong"] * (m - right
                                                                             - n_abstain))
    label = np.zeros(m, dtype=int)
    predict = np.where(kind == "right", 0, np.where(kind == "abstain", -1, 1))
    radius = np.where(kind == "abstain", 0.0, sigma * norm.ppf(lows))
    return pd.DataFrame({"idx": np.arange(m), "label": label, "predict": predict,
                         "radius": radius, "correct": (kind == "right").astype(int),
                         "pA_lower": lows})


# Stage-1 radius levels kept clear of RADII, so that the optimistic radius of a row stays below
# the next grid radius (checked in test_the_synthetic_curves_are_the_designed_ones).
L25 = (0.1, 0.35, 0.6, 0.78)
L50 = (0.15, 0.6, 0.85, 1.2)
DESIGN = {  # trial: (σ, fractions at its σ's levels, abstain); the rest certified wrong
    "A25": (0.25, (0.25, 0.25, 0.25, 0.10), 0.05),  # .85 .60 .35 .10 0: wins r = 0
    "B25": (0.25, (0.10, 0.15, 0.25, 0.20), 0.05),  # .70 .60 .45 .20 0: σ = .25 at .5, .75
    "D25": (0.25, (0.20, 0.15, 0.10, 0.00), 0.05),  # .45 .25 .10 0 0: dominated by A25, B25
    "C50": (0.50, (0.05, 0.15, 0.20, 0.25), 0.10),  # .65 .60 .60 .45 .25: the high radii
    "E50": (0.50, (0.30, 0.25, 0.10, 0.05), 0.05),  # .70 .40 .40 .15 .05: σ = .5 at r = 0
    "D50": (0.50, (0.20, 0.10, 0.05, 0.05), 0.05),  # .40 .20 .20 .10 .05: dominated by C50
}
CURVES = {"A25": (.85, .60, .35, .10, 0), "B25": (.70, .60, .45, .20, 0),
          "D25": (.45, .25, .10, 0, 0), "C50": (.65, .60, .60, .45, .25),
          "E50": (.70, .40, .40, .15, .05), "D50": (.40, .20, .20, .10, .05)}


def sweep(design=DESIGN) -> tuple[dict[str, pd.DataFrame], dict[str, float]]:
    rows, sigma_of = {}, {}
    for trial, (sigma, fractions, abstain) in design.items():
        levels = dict(zip(L25 if sigma == 0.25 else L50, fractions, strict=True))
        rows[trial] = make_rows(sigma, levels, abstain=abstain)
        sigma_of[trial] = sigma
    return rows, sigma_of


def decide(rows, sigma_of, radii=RADII, alpha=ALPHA):
    return selection.reachable_trials(rows, sigma_of, radii, alpha, FULL_N, FULL_ALPHA,
                                   stage1_n=N1, stage1_alpha=ALPHA1)


def test_the_synthetic_curves_are_the_designed_ones():
    rows, sigma_of = sweep()
    for trial, curve in CURVES.items():
        radius = rows[trial]["radius"].to_numpy()
        right = right_rows(rows[trial])
        assert np.allclose([np.mean(right & (radius >= r)) for r in RADII], curve), trial
        # The optimistic radius of a right row stays below the next grid radius above it.
        rho = selection.optimistic_radii(rows[trial], sigma_of[trial], ALPHA, FULL_N, FULL_ALPHA,
                                      N1, ALPHA1)
        for r in RADII:
            assert not np.any(right & (radius < r) & (rho >= r) & (r > 0)), (trial, r)


def test_synthetic_sweep_keeps_exactly_the_trials_that_can_win():
    """A25 (r = 0), B25 (σ = 0.25 at 0.5 and 0.75), C50 (σ = 0.5 and overall from r = 0.25 on:
    bad at r = 0, it holds the high-radius end) and E50 (dominated overall, best of σ = 0.5 at
    r = 0: kept only by the per-σ envelope) go on; D25 and D50 stop."""
    rows, sigma_of = sweep()
    verdict = decide(rows, sigma_of)
    kept = sorted(t for t, v in verdict.items() if v == selection.REACHABLE)
    assert kept == ["A25", "B25", "C50", "E50"], verdict
    # E50 is dominated overall at every radius: only its σ group keeps it.
    low = {t: selection.certified_bounds(r, RADII, ALPHA)[0] for t, r in rows.items()}
    overall = np.max(list(low.values()), axis=0)
    _, upper = selection.certified_bounds(rows["E50"], RADII, ALPHA, sigma=0.5, full_n=FULL_N,
                                       full_alpha=FULL_ALPHA, stage1_n=N1,
                                       stage1_alpha=ALPHA1)
    assert np.all(upper < overall)


def test_reasons_name_the_radius_and_both_envelopes():
    rows, sigma_of = sweep()
    verdict = decide(rows, sigma_of)
    for trial, sigma in (("D25", 0.25), ("D50", 0.5)):
        reason = verdict[trial]
        assert reason.startswith("dominated at every radius: best upper "), reason
        assert "r=" in reason and f"σ={sigma:g}" in reason and "overall" in reason, reason
        r = float(reason.split("r=")[1].split()[0])
        assert r in RADII
    # D25 comes closest to A25/B25 where its curve is nearest theirs relative to the noise.
    assert "r=0.75" in verdict["D25"] or "r=0.5" in verdict["D25"], verdict["D25"]


def test_a_near_miss_within_noise_is_kept():
    """A trial 0.02 below the best of its σ everywhere could still attain the envelope: its
    upper bound, not its lower bound, must be what is compared."""
    design = {**DESIGN, "N50": (0.50, (0.05, 0.14, 0.20, 0.24), 0.10)}  # C50 − .01/.02
    rows, sigma_of = sweep(design)
    verdict = decide(rows, sigma_of)
    assert verdict["N50"] == selection.REACHABLE, verdict["N50"]
    assert verdict["D50"] != selection.REACHABLE


def test_upper_bound_is_on_the_accuracy_at_full_n():
    """Stage-1 radii are capped by n1: with n1 = 1,000 no σ = 0.25 row certifies beyond
    0.25·Φ⁻¹(0.001^(1/1000)) = 0.615, while full n certifies unanimous images to 0.95. The upper
    bound covers what full n could certify, and is 0 beyond R_max."""
    n1 = 1000
    reach = selection.largest_radius(0.25, n1, ALPHA1)
    assert reach == pytest.approx(0.615, abs=1e-3)
    rows = make_rows(0.25, {0.7: 0.9}, abstain=0.05, n=n1)  # level beyond reach: unanimous
    assert rows["radius"].max() == pytest.approx(reach)
    radii = (0.0, 0.5, 0.7, 0.9, 0.96)
    low, up = selection.certified_bounds(rows, radii, ALPHA, sigma=0.25, full_n=FULL_N,
                                      full_alpha=FULL_ALPHA, stage1_n=n1, stage1_alpha=ALPHA1)
    assert np.all(low[2:] == 0)  # stage 1 certifies nothing at 0.7 or beyond
    assert np.all(up[:4] >= 0.9), up  # full n could certify the 90% unanimous images to 0.95
    assert up[4] == 0.0  # > R_max = 0.953
    # A σ = 0.25 trial that stage 1 shows worse than a rival up to 0.6 stays in: at 0.7 its
    # unanimous images may beat the rival's, whose stage-1 radii are lower.
    rival = make_rows(0.25, {0.6: 0.5, 0.3: 0.45}, abstain=0.0, n=n1)
    capped = make_rows(0.25, {0.7: 0.6}, abstain=0.0, n=n1)
    verdict = selection.reachable_trials({"rival": rival, "capped": capped},
                                      {"rival": 0.25, "capped": 0.25}, (0.0, 0.3, 0.6, 0.7),
                                      ALPHA, FULL_N, FULL_ALPHA, stage1_n=n1,
                                      stage1_alpha=ALPHA1)
    assert verdict == {"rival": selection.REACHABLE, "capped": selection.REACHABLE}


def test_bounds_are_the_exact_clopper_pearson_interval():
    rows = make_rows(0.5, {0.15: 0.3, 0.6: 0.2, 1.2: 0.1}, abstain=0.1, m=200)
    radii = (0.0, 0.5, 1.0, 1.5)
    low, up = selection.certified_bounds(rows, radii, 0.01)
    for r, lo, hi in zip(radii, low, up, strict=True):
        k = int(np.sum(right_rows(rows) & (rows["radius"].to_numpy() >= r)))
        ci = binomtest(k, 200).proportion_ci(0.98, method="exact")
        assert lo == pytest.approx(ci.low, abs=1e-9) and hi == pytest.approx(ci.high, abs=1e-9)
    # At full n the upper bound only grows, and the lower bound is the same.
    low_full, up_full = selection.certified_bounds(rows, radii, 0.01, sigma=0.5, full_n=FULL_N,
                                                full_alpha=FULL_ALPHA, stage1_n=N1,
                                                stage1_alpha=ALPHA1)
    assert np.array_equal(low_full, low) and np.all(up_full >= up)


def test_counts_are_read_back_from_pA_lower():
    counts = np.array([0, 1, 500, 999, 1000])
    assert np.array_equal(selection.implied_counts(table(1000, 0.001)[counts], 1000, 0.001),
                          counts)
    assert selection.implied_counts(np.array([0.5123456]), 1000, 0.001)[0] == -1
    # An unmatched pA_lower (other n or α) makes the image optimistic: radius R_max.
    rows = make_rows(0.25, {0.3: 1.0}, m=5, n=1000)
    rho = selection.optimistic_radii(rows, 0.25, ALPHA, FULL_N, FULL_ALPHA, stage1_n=2000,
                                  stage1_alpha=ALPHA1)
    assert np.allclose(rho, selection.largest_radius(0.25, FULL_N, FULL_ALPHA))


def test_abstaining_rows_may_still_be_right_at_full_n_and_certified_wrong_ones_not():
    """An abstention's ĉ may be the label (probability up to p̄) or not (the label then has at
    most 1 − pA_lower); a certified wrong class leaves the label ≤ 1/2: never right."""
    n, a = 1000, 0.001
    lows = table(n, a)[[count_for(0.48, n, a), count_for(0.2, n, a), count_for(0.9, n, a),
                        count_for(0.5, n, a) + 1]]
    rows = pd.DataFrame({"idx": range(4), "label": 0, "predict": [-1, -1, 1, 0],
                         "radius": [0.0, 0.0, 0.5, 0.0], "correct": [0, 0, 0, 1],
                         "pA_lower": lows})
    rho = selection.optimistic_radii(rows, 0.5, ALPHA, FULL_N, FULL_ALPHA, n, a)
    p_bar = selection.cp_upper(count_for(0.48, n, a), n, ALPHA)
    assert rho[0] == pytest.approx(0.5 * norm.ppf(max(p_bar, 1 - lows[0])))
    assert rho[0] > 0
    assert rho[1] == pytest.approx(0.5 * norm.ppf(1 - lows[1]))  # ≈ 0.42
    assert rho[2] == -np.inf
    assert rho[3] > rows["radius"][3]
    _, up = selection.certified_bounds(rows, (0.0, 0.4), ALPHA, sigma=0.5, full_n=FULL_N,
                                    full_alpha=FULL_ALPHA, stage1_n=n, stage1_alpha=a)
    assert up[0] >= selection.cp_upper(3, 4, ALPHA)  # rows 0, 1 and 3 may be right
    assert up[1] >= selection.cp_upper(1, 4, ALPHA)  # row 1 may reach 0.4


def test_winners_overall_and_per_sigma_with_ties():
    rows, sigma_of = sweep()
    # Full-set rows as designed: A25 wins r = 0, C50 r ≥ 0.25 overall (tied with A25 and B25
    # at 0.25), B25 σ = 0.25 at 0.5 and 0.75, E50 σ = 0.5 at r = 0; D25, D50 nowhere.
    assert selection.winners(rows, sigma_of, RADII) == ["A25", "B25", "C50", "E50"]
    # Ties (common.envelope's rule): at r = 0.25 A25, B25 and C50 tie at .60; A25 wins overall
    # and σ = 0.25 by its clean accuracy (.85 > .70 > .65), C50 σ = 0.5 alone; B25 nowhere.
    assert selection.winners({t: rows[t] for t in ("A25", "B25", "C50")}, sigma_of, (0.25,)) == [
        "A25", "C50"]
    # Two identical trials: the earlier name wins; a radius where the envelope is 0 picks nobody.
    twin = {"y": rows["D25"].copy(), "x": rows["D25"], "z": rows["D50"]}
    same = {"x": 0.5, "y": 0.5, "z": 0.5}
    assert selection.winners(twin, same, (0.0,)) == ["x"]
    assert selection.winners(twin, same, (5.0,)) == []
    assert selection.winners({}, {}, RADII) == []


def test_winners_are_the_trials_the_analysis_envelopes_choose():
    """Stage 3 certifies in full exactly the trials the report's envelopes (overall and per σ,
    plain max) then choose at ``radii`` on these images: one tie rule."""
    from smoothadv.analysis import curves

    rows, sigma_of = sweep()
    for subset in (list(rows), ["A25", "B25", "C50"], ["B25", "C50", "E50", "D50"]):
        full = {t: rows[t] for t in subset}
        results = pd.concat([r.assign(trial=t, kind="certify") for t, r in full.items()],
                            ignore_index=True)
        trials = pd.DataFrame({"trial": subset, "sigma": [sigma_of[t] for t in subset]})
        chosen = pd.concat([curves.envelope(results, RADII),
                            curves.envelope_per_sigma(results, trials, RADII)])
        expected = set(chosen.loc[chosen["accuracy"] > 0, "trial"])
        assert set(selection.winners(full, sigma_of, RADII)) == expected, subset


# ---- simulation: true full-n curves computed exactly --------------------------------------

SIM_SIGMA = 0.5
SIM_N1, SIM_ALPHA1 = 1000, 0.001  # stage 1 reaches 1.23 at σ = 0.5
SIM_RADII = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
SIM_TRIALS = {"t1": (0.80, 1.0), "t2": (0.74, 1.25), "t3": (0.77, 1.12), "t4": (0.62, 1.7),
              "t5": (0.55, 0.9)}  # (fraction with p ≥ 1/2, largest true radius)
SIM_M, SIM_DRAWS = 300, 600


def population(fraction: float, largest: float, size: int, rng) -> np.ndarray:
    """The label's true probability p under noise, per image: a ``fraction`` with true radius
    σ·Φ⁻¹(p) uniform on [0, largest], the rest p uniform on [0.05, 0.45]."""
    good = rng.random(size) < fraction
    return np.where(good, norm.cdf(rng.uniform(0, largest, size) / SIM_SIGMA),
                    rng.uniform(0.05, 0.45, size))


def true_full_curve(p: np.ndarray) -> np.ndarray:
    """E[certified accuracy at full n] over the population: ĉ is the label iff p ≥ 1/2 (the
    model of the simulation), and it certifies r iff nA reaches the least count whose CP lower
    bound is ≥ Φ(r/σ)."""
    need = np.searchsorted(table(FULL_N, FULL_ALPHA), norm.cdf(np.asarray(SIM_RADII) / SIM_SIGMA))
    right = p >= 0.5
    return np.array([np.mean(np.where(right, binom.sf(k - 1, FULL_N, p), 0.0)) for k in need])


def stage1_rows(p: np.ndarray, rng) -> pd.DataFrame:
    """CERTIFY at n1 on images of true probabilities p: ĉ is the label iff p ≥ 1/2, otherwise a
    class of probability 1 − p."""
    top = np.where(p >= 0.5, p, 1 - p)
    low = table(SIM_N1, SIM_ALPHA1)[rng.binomial(SIM_N1, top)]
    certified = low >= 0.5
    predict = np.where(certified, np.where(p >= 0.5, 0, 1), -1)
    return pd.DataFrame({"idx": np.arange(len(p)), "label": 0, "predict": predict,
                         "radius": np.where(certified, SIM_SIGMA * norm.ppf(low), 0.0),
                         "correct": (predict == 0).astype(int), "pA_lower": low})


def test_a_trial_whose_full_n_curve_touches_the_envelope_is_kept():
    """Five σ = 0.5 trials with crossing curves. The rule drops a trial whose true full-n
    curve attains the envelope at some radius with probability ≤ (1 + K)·α = 0.6% (K = 5, α =
    0.001: the module's bound); over 600 draws we require it to happen in ≤ 0.1% of the
    (draw, touching trial) pairs, and check that dominated trials are dropped sometimes."""
    rng = np.random.default_rng(2019)
    pops = {t: population(f, b, 20_000, rng) for t, (f, b) in SIM_TRIALS.items()}
    truth = {t: true_full_curve(p) for t, p in pops.items()}
    best = np.max(list(truth.values()), axis=0)
    touching = [t for t in truth if np.any(truth[t] >= best - 1e-12)]
    assert len(touching) >= 3, touching  # the envelope changes hands
    sigma_of = dict.fromkeys(pops, SIM_SIGMA)
    dropped = pairs = stopped = 0
    for _ in range(SIM_DRAWS):
        rows = {t: stage1_rows(rng.choice(p, SIM_M), rng) for t, p in pops.items()}
        verdict = selection.reachable_trials(rows, sigma_of, SIM_RADII, ALPHA, FULL_N, FULL_ALPHA,
                                          stage1_n=SIM_N1, stage1_alpha=SIM_ALPHA1)
        dropped += sum(verdict[t] != selection.REACHABLE for t in touching)
        pairs += len(touching)
        stopped += sum(v != selection.REACHABLE for v in verdict.values())
    assert dropped <= 0.001 * pairs, (dropped, pairs)
    assert stopped > 0  # the rule is not vacuous here


def test_default_radii_stop_where_n_certifies_nothing_or_at_the_target_radius():
    default_radii, largest_radius = selection.default_radii, selection.largest_radius
    assert largest_radius(0.25, 100, 0.001) == pytest.approx(0.375, abs=0.01)
    assert default_radii(0.25, 100, 0.001) == [0.0, 0.25]
    assert default_radii(1.0, 500, 0.001) == [0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0]
    assert default_radii(1.0, 500, 0.001, target_radius=0.6) == [0.0, 0.25, 0.5]
    assert default_radii(0.25, 100, 0.001, target_radius=2.0) == [0.0, 0.25]
