"""The evaluation metrics, each defined once (torch-free: numpy and pandas only).

Every row of a CERTIFY, PREDICT or attack file is one image (for the attack: one image at one
radius ε). A row counts as right when the smoothed classifier predicted (did not abstain) and
its prediction is the label. Over the m rows of a trial (Cohen et al. 2019, Section 4):

- certified accuracy at ℓ2 radius r: (1/m) Σ_i 1[right_i ∧ radius_i ≥ r] (abstentions wrong);
- ACR, the average certified radius: (1/m) Σ_i radius_i·1[right_i];
- abstention rate: the fraction of rows whose prediction is ABSTAIN (−1);
- accuracy (clean for PREDICT, certified at radius 0 for CERTIFY): (1/m) Σ_i 1[right_i];
- empirical accuracy under attack (Salman et al. 2019, Section 4.3): the accuracy of the attack
  rows of each ε.

The trial's final report (:mod:`sweep.trial_worker`), the CLI summaries (:mod:`cli.smoothing`), the
analysis (:mod:`analysis.curves`) and the benchmarks all call these functions.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

REPORT_RADII = (0.0, 0.25, 0.5, 0.75, 1.0)  # the radii of a trial's final metrics


def right_rows(rows: pd.DataFrame) -> np.ndarray:
    """Whether each row is right: predicted (not abstained) and its prediction correct."""
    return (rows["correct"].to_numpy() == 1) & (rows["predict"].to_numpy() >= 0)


def accuracy(ok: np.ndarray) -> float:
    """(1/m) Σ_i ok_i; NaN when m = 0."""
    ok = np.asarray(ok, dtype=bool)
    return float(np.count_nonzero(ok) / len(ok)) if len(ok) else float("nan")


def certified_accuracy(radius: np.ndarray, ok: np.ndarray, radii: Sequence[float]) -> np.ndarray:
    """(1/m) Σ_i 1[ok_i ∧ radius_i ≥ r] for every r of ``radii``; NaN when m = 0."""
    radii = np.asarray(radii, dtype=float)
    if len(radius) == 0:
        return np.full(len(radii), np.nan)
    good = np.sort(np.asarray(radius, dtype=float)[np.asarray(ok, dtype=bool)])
    return (len(good) - np.searchsorted(good, radii, side="left")) / len(radius)


def average_certified_radius(radius: np.ndarray, ok: np.ndarray) -> float:
    """ACR = (1/m) Σ_i radius_i·ok_i; NaN when m = 0."""
    if len(radius) == 0:
        return float("nan")
    return float(np.mean(np.asarray(radius, dtype=float) * np.asarray(ok, dtype=bool)))


def abstention_rate(predict: np.ndarray) -> float:
    """The fraction of predictions that are ABSTAIN (−1); NaN when there are none."""
    predict = np.asarray(predict)
    return float(np.count_nonzero(predict < 0) / len(predict)) if len(predict) else float("nan")


def certified_summary(rows: pd.DataFrame, radii: Sequence[float] = REPORT_RADII
                      ) -> dict[str, float]:
    """One CERTIFY file's metrics: ``cert_acc_{r}`` for each r of ``radii``, ``acr``,
    ``abstain`` and ``certified_images``; empty when the file has no rows."""
    if rows.empty:
        return {}
    ok = right_rows(rows)
    radius = rows["radius"].to_numpy(dtype=float)
    out = {f"cert_acc_{r:g}": float(a)
           for r, a in zip(radii, certified_accuracy(radius, ok, radii), strict=True)}
    out["acr"] = average_certified_radius(radius, ok)
    out["abstain"] = abstention_rate(rows["predict"].to_numpy())
    out["certified_images"] = len(rows)
    return out


def empirical_accuracy(rows: pd.DataFrame, by: Sequence[str] = ("epsilon",)) -> pd.DataFrame:
    """Attack rows grouped by the columns ``by`` (the index, ascending): ``accuracy`` (the
    fraction right) and ``images``."""
    frame = rows[list(by)].assign(ok=right_rows(rows))
    keys = list(by) if len(by) > 1 else by[0]
    return frame.groupby(keys, sort=True)["ok"].agg(accuracy="mean", images="size")
