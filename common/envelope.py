"""The upper envelope of certified-accuracy curves and its one tie rule (numpy only).

Curves are given as a table, one row per radius and one column per trial; NaN means no value
(a trial with no rows there, a radius it did not report). At each radius the envelope's value
(:func:`best_values`) is the largest value any trial has there, NaN where none has one. Its
winner (:func:`winners`) is the trial that attains it, and the tie rule is:

    ties go to the higher clean accuracy (certified accuracy at radius 0, on the same
    images; a trial without one after every trial with one), then to the earlier name.

Every user of an envelope takes it from here: the analysis's envelope files and figures
(analysis.curves, Salman et al. 2019, Fig. 1 left: value and winner per radius), staged
certification (common.stage_selection: the envelope of the stage-1 lower bounds, and the winners
certified in full at stage 3, the trials the analysis then picks) and early stopping
(sweep.early_stopping: values only, kept incrementally by its per-(σ, rung) index and tested
equal to :func:`best_by_radius`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

NONE = -1  # winners' column where no trial has a value


def rank(value: float) -> tuple[bool, float]:
    """Sort key of an envelope value: larger first, NaN (no value) after every number."""
    return (True, 0.0) if math.isnan(value) else (False, -value)


def tie_order(names: Sequence[str], clean: Sequence[float] | None = None) -> np.ndarray:
    """The columns of ``names`` from the first to the last to win a tie: higher ``clean``
    first (NaN, or no ``clean`` at all, after every number), then the earlier name."""
    clean = [math.nan] * len(names) if clean is None else [float(c) for c in clean]
    return np.array(sorted(range(len(names)), key=lambda j: (rank(clean[j]), names[j])),
                    dtype=np.intp)


def _table(values: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
    """``values`` as a float radius × trial array (no radius at all: 0 × 0)."""
    values = np.asarray(values, dtype=float)
    if values.size == 0 and values.ndim < 2:
        return values.reshape(0, 0)
    if values.ndim != 2:
        raise ValueError(f"curves must be a radius × trial table, got shape {values.shape}")
    return values


def best_values(values: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
    """Per row (radius) of ``values`` (radius × trial), the largest non-NaN value; NaN where
    the row has none (no trial, or only NaN)."""
    values = _table(values)
    present = ~np.isnan(values)
    top = np.max(np.where(present, values, -np.inf), axis=1, initial=-np.inf)
    return np.where(present.any(axis=1), top, np.nan)


def winners(values: np.ndarray | Sequence[Sequence[float]], names: Sequence[str],
            clean: Sequence[float] | None = None) -> np.ndarray:
    """Per row (radius) of ``values`` (radius × trial, columns named ``names``, clean
    accuracies ``clean``), the column of the trial that attains :func:`best_values` under the
    tie rule (module doc); NONE where the row has no value."""
    values = _table(values)
    if values.shape[1] == 0:
        return np.full(len(values), NONE, dtype=np.intp)
    order = tie_order(names, clean)
    hit = (values == best_values(values)[:, None])[:, order]  # (NaN equals nothing)
    return np.where(hit.any(axis=1), order[np.argmax(hit, axis=1)], NONE)


def best_by_radius(curves: Iterable[Mapping[float, float]]) -> dict[float, float]:
    """:func:`best_values` of curves given as radius → value: at every radius some curve has,
    the largest value there (NaN where all of them are NaN)."""
    curves = list(curves)
    radii = list(dict.fromkeys(r for curve in curves for r in curve))
    table = [[curve.get(r, math.nan) for curve in curves] for r in radii]
    return dict(zip(radii, best_values(table).tolist(), strict=True))
