"""common.envelope: the pointwise best curve over trials and its one tie rule (higher clean
accuracy, then the earlier name), NaN as no value, and the edge cases (no trial, no radius)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from smoothadv.common.envelope import NONE, best_by_radius, best_values, rank, tie_order, winners

NAN = math.nan
NAMES = ["b", "a", "c"]
# radius × trial (columns b, a, c)
CURVES = np.array([[0.8, 0.8, 0.7],    # b and a tie
                   [0.5, 0.6, 0.6],    # a and c tie
                   [0.4, 0.4, 0.4],    # all three tie
                   [NAN, 0.1, 0.2],    # b has no value: c alone is best
                   [NAN, NAN, NAN],    # nobody has a value
                   [0.0, NAN, 0.0]])   # b and c tie at 0, a has none


def test_the_value_is_the_largest_non_missing_one():
    np.testing.assert_array_equal(best_values(CURVES), [0.8, 0.6, 0.4, 0.2, NAN, 0.0])


def test_ties_go_to_the_higher_clean_accuracy_then_the_earlier_name():
    by_name = winners(CURVES, NAMES)  # no clean accuracy: the name decides
    assert [NAMES[j] if j != NONE else None for j in by_name] == ["a", "a", "a", "c", None, "b"]
    clean = [0.7, 0.7, 0.9]  # c first, then a (= b, earlier name)
    by_clean = winners(CURVES, NAMES, clean)
    assert [NAMES[j] if j != NONE else None for j in by_clean] == [
        "a", "c", "c", "c", None, "c"]


def test_a_missing_clean_accuracy_loses_ties_to_any_known_one():
    assert tie_order(NAMES, [NAN, 0.1, 0.0]).tolist() == [1, 2, 0]
    assert tie_order(NAMES, [NAN, NAN, 0.0]).tolist() == [2, 1, 0]
    assert tie_order(NAMES).tolist() == [1, 0, 2]
    assert sorted([0.5, NAN, 1.0, 0.0], key=rank)[:3] == [1.0, 0.5, 0.0]


def test_the_winner_attains_the_value():
    rng = np.random.default_rng(3)
    for _ in range(200):
        values = rng.choice([0.0, 0.25, 0.5, NAN], size=(rng.integers(1, 6), rng.integers(1, 6)))
        names = [f"t{j}" for j in rng.permutation(values.shape[1])]
        clean = rng.choice([0.5, 0.9, NAN], size=values.shape[1])
        best, won = best_values(values), winners(values, names, clean)
        for row, value, j in zip(values, best, won, strict=True):
            if np.isnan(row).all():
                assert j == NONE and math.isnan(value)
                continue
            assert row[j] == value == np.nanmax(row)
            rivals = [k for k in range(len(row)) if row[k] == value]
            assert j == min(rivals, key=lambda k: (rank(clean[k]), names[k]))


def test_no_trial_and_no_radius():
    assert np.isnan(best_values(np.zeros((3, 0)))).tolist() == [True] * 3
    assert winners(np.zeros((3, 0)), []).tolist() == [NONE] * 3
    assert best_values([]).shape == (0,) and winners([], []).shape == (0,)
    assert winners(np.zeros((0, 2)), ["a", "b"]).shape == (0,)
    assert best_by_radius([]) == {}
    with pytest.raises(ValueError, match="radius × trial"):
        best_values(np.zeros(3))


def test_curves_as_mappings_share_the_rule():
    curves = [{0.0: 0.5, 0.25: 0.2}, {0.0: 0.7, 0.5: NAN}, {0.25: NAN, 0.5: NAN}]
    got = best_by_radius(curves)
    assert list(got) == [0.0, 0.25, 0.5]
    assert got[0.0] == 0.7 and got[0.25] == 0.2 and math.isnan(got[0.5])
    # the same table as best_values sees it, whatever the order of the curves
    assert best_by_radius(reversed(curves))[0.25] == 0.2
