"""Certified-accuracy curves, upper envelopes (plain max and held-out selection) and Cohen et
al.'s high-probability bound.

Certified accuracy of a trial at ℓ2 radius r over its m certified images (Cohen et al. 2019,
Section 4): acc(r) = (1/m) Σ_i 1[correct_i ∧ radius_i ≥ r], abstentions counting as wrong.
ACR = (1/m) Σ_i radius_i·correct_i. Both, like every metric, are computed by
:mod:`common.metrics`, shared with the trial's report and the CLI. The upper envelope (Salman
et al. 2019, Fig. 1 left) takes at each radius the best trial, by the one rule of
:mod:`common.envelope` (shared with staged certification and early stopping): ties go to the
higher clean accuracy, then to the name.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from smoothadv.common import envelope as best_curve
from smoothadv.common import metrics

CURVE_STEP = 0.01  # radius step of the envelope files and figures
TABLE_STEP = 0.25  # radius step of the default columns of certified_accuracy.csv
HOLDOUT_SEED = 2019  # fixes the split of image indices for --selection holdout
SELECTIONS = ("max", "holdout")


def radius_grid(largest: float, step: float) -> np.ndarray:
    """0, step, 2·step, … up to ``largest`` (inclusive), each rounded to 10 decimals so that a
    certified radius of exactly 0.25 counts at the grid point 0.25."""
    count = int(math.floor(largest / step + 1e-9)) + 1 if largest > 0 else 1
    return np.round(np.arange(count) * step, 10)


def _certify_rows(results: pd.DataFrame) -> pd.DataFrame:
    return results[results["kind"] == "certify"]


def _trial_order(rows: pd.DataFrame) -> list[str]:
    trials = rows["trial"]
    if isinstance(trials.dtype, pd.CategoricalDtype):
        present = set(trials.unique())
        return [t for t in trials.cat.categories if t in present]
    return list(dict.fromkeys(trials))


def _codes(trials: pd.Series, order: list[str]) -> np.ndarray:
    """Position of each row's trial in ``order`` (-1 if absent), without per-row strings."""
    if isinstance(trials.dtype, pd.CategoricalDtype):
        recode = pd.Index(order).get_indexer(trials.cat.categories)
        codes = trials.cat.codes.to_numpy()
        return np.where(codes >= 0, recode[codes], -1)
    return pd.Index(order).get_indexer(trials)


def trial_curves(results: pd.DataFrame, radii: Sequence[float],
                 images: np.ndarray | None = None) -> pd.DataFrame:
    """Certified accuracy (index: radius, columns: trial). With ``images``, only the rows whose
    ``idx`` is among them count; a trial with none of them gets NaN."""
    rows = _certify_rows(results)
    order = _trial_order(rows)
    if images is not None:
        rows = rows[rows["idx"].isin(images)]
    sort, spans = _spans(rows, order)
    radius = rows["radius"].to_numpy(dtype=float)[sort]
    ok = metrics.right_rows(rows)[sort]
    columns = {trial: metrics.certified_accuracy(radius[a:b], ok[a:b], radii)
               for trial, (a, b) in zip(order, spans, strict=True)}
    return pd.DataFrame(columns, index=pd.Index(np.asarray(radii, dtype=float), name="radius"))


def _spans(rows: pd.DataFrame, order: list[str]) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """The permutation that sorts ``rows`` by trial (in ``order``) and, per trial of
    ``order``, its rows' [start, end) in that sorted order."""
    codes = _codes(rows["trial"], order)
    sort = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[sort], np.arange(len(order) + 1))
    return sort, list(zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True))


def trial_summary(results: pd.DataFrame, radii: Sequence[float]) -> pd.DataFrame:
    """Per trial: certified accuracy at each radius (columns ``acc@r``), ``acr``,
    ``abstain_rate``, ``clean_accuracy`` (radius 0) and ``images``."""
    rows = _certify_rows(results)
    curves = trial_curves(results, radii)
    out = curves.T
    out.columns = [f"acc@{r:g}" for r in curves.index]
    sort, spans = _spans(rows, list(out.index))
    radius = rows["radius"].to_numpy(dtype=float)[sort]
    ok = metrics.right_rows(rows)[sort]
    predict = rows["predict"].to_numpy()[sort]
    stats = pd.DataFrame(
        [(metrics.average_certified_radius(radius[a:b], ok[a:b]),
          metrics.abstention_rate(predict[a:b]), metrics.accuracy(ok[a:b]), b - a)
         for a, b in spans],
        index=out.index, columns=["acr", "abstain_rate", "clean_accuracy", "images"])
    out = out.join(stats)
    out.index.name = "trial"
    return out


def _winners(curves: pd.DataFrame, clean: pd.Series) -> np.ndarray:
    """Per row of ``curves`` (radius × trial) the trial on the envelope, under common.envelope's
    tie rule (higher ``clean``, then the earlier name); None where no trial has a value."""
    names = list(curves.columns)
    j = best_curve.winners(curves.to_numpy(dtype=float), names, clean.reindex(names).to_numpy())
    return np.array([names[k] if k != best_curve.NONE else None for k in j], dtype=object)


def holdout_split(idx: Sequence[int], seed: int = HOLDOUT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Split the distinct image indices by a seeded permutation into a selection half (the
    larger when odd) and an evaluation half; the same for every trial."""
    distinct = np.unique(np.asarray(idx, dtype=np.int64))
    shuffled = np.random.default_rng(seed).permutation(distinct)
    k = (len(distinct) + 1) // 2
    return np.sort(shuffled[:k]), np.sort(shuffled[k:])


ENVELOPE_COLUMNS = ["radius", "accuracy", "trial", "images", "chosen_on", "common_only"]


def common_images(results: pd.DataFrame) -> np.ndarray:
    """The image indices (``idx``) that every trial of ``results`` certified, sorted."""
    rows = _certify_rows(results)[["trial", "idx"]].drop_duplicates()
    idx, counts = np.unique(rows["idx"].to_numpy(dtype=np.int64), return_counts=True)
    return idx[counts == rows["trial"].nunique()]


def choose_and_report(rows: pd.DataFrame, radii: Sequence[float], common: np.ndarray,
                      within: np.ndarray | None = None,
                      report: np.ndarray | None = None) -> pd.DataFrame:
    """The envelope's one rule: at each radius the trial is chosen on the images ``common`` to
    all trials (those also in ``within``, the selection half, when given) and its accuracy is
    reported on all of its own rows (those in ``report``, the evaluation half, when given).

    Salman et al. 2019 (Appendix) chose their models on 500 test images and reported them on all
    10,000; a staged sweep (common.stage_selection) does the same: every trial is certified on the
    planned images, its winners on the full test set. A max over a mix of some trials' full-test
    rows and others' subset rows is never taken. Ties go to the higher clean accuracy on the same
    images, then to the name. ``chosen_on``: the images the choice was made on (0: no image is
    common, so each trial is judged on its own rows). ``common_only``: the winner has no rows
    beyond the common images while another trial has (its full-test rows are missing: stage 3 not
    run or not finished), so its accuracy is on the common images only. ``images``: the m behind
    the reported accuracy."""
    radii = np.asarray(radii, dtype=float)
    choose = common if within is None else np.intersect1d(common, within)
    basis = choose if len(choose) else within
    trial = _winners(trial_curves(rows, radii, basis), trial_curves(rows, [0.0], basis).iloc[0])
    measured = trial_curves(rows, radii, report)
    column = measured.columns.get_indexer(trial)
    accuracy = np.where(column >= 0, measured.to_numpy()[np.arange(len(radii)), column], np.nan)
    shown = rows if report is None else rows[rows["idx"].isin(report)]
    m = shown.groupby("trial", observed=True, sort=False).size().reindex(trial).fillna(0)
    beyond = shown[~shown["idx"].isin(common)].groupby("trial", observed=True).size()
    only = (len(common) > 0) & (beyond.sum() > 0) & (beyond.reindex(trial).fillna(0) == 0)
    return pd.DataFrame({"radius": radii, "accuracy": accuracy, "trial": trial,
                         "images": m.to_numpy(dtype=np.int64), "chosen_on": len(choose),
                         "common_only": np.asarray(only, dtype=bool)})


def envelope(results: pd.DataFrame, radii: Sequence[float], selection: str = "max",
             seed: int = HOLDOUT_SEED) -> pd.DataFrame:
    """The upper envelope (:func:`choose_and_report`'s columns), the trial at each radius chosen
    on the images common to all trials and reported on its own rows.

    ``max``: chosen on every common image, reported on all of the trial's rows (what the paper
    plots; biased upwards, being a maximum of noisy estimates, where all trials have the same
    images). ``holdout``: chosen on the common images of the selection half, reported on the
    trial's rows in the evaluation half, which then is an unbiased estimate for it.
    """
    rows = _certify_rows(results)
    common = common_images(rows)
    if selection == "max":
        return choose_and_report(rows, radii, common)
    if selection == "holdout":
        choose, measure = holdout_split(rows["idx"].to_numpy(), seed)
        return choose_and_report(rows, radii, common, choose, measure)
    raise ValueError(f"selection must be one of {SELECTIONS}, got {selection!r}")


def envelope_per_sigma(results: pd.DataFrame, trials: pd.DataFrame, radii: Sequence[float],
                       selection: str = "max") -> pd.DataFrame:
    """``envelope`` over the trials of each σ (its winner chosen on the images common to
    them): columns ``sigma`` + those of ``envelope``."""
    rows = _certify_rows(results)
    parts = []
    for sigma, group in trials.groupby("sigma", sort=True):
        own = rows[rows["trial"].isin(group["trial"])]
        if len(own):
            parts.append(envelope(own, radii, selection).assign(sigma=sigma))
    columns = ["sigma", *ENVELOPE_COLUMNS]
    return pd.concat(parts, ignore_index=True)[columns] if parts else pd.DataFrame(columns=columns)


def cohen_lower_bound(accuracy: np.ndarray, m: np.ndarray, alpha: np.ndarray | float,
                      rho: float = 0.001) -> np.ndarray:
    """Cohen et al.'s (2019, Appendix) high-probability lower bound on the true certified
    accuracy of one fixed classifier from its estimate over m images, each certified with
    failure probability α: acc − α − sqrt(α(1−α)·ln(1/ρ)/m) − ln(1/ρ)/(3m), holding with
    probability ≥ 1 − ρ; clipped at 0."""
    accuracy = np.asarray(accuracy, dtype=float)
    m = np.asarray(m, dtype=float)
    alpha = np.asarray(alpha, dtype=float)
    log = math.log(1 / rho)
    with np.errstate(divide="ignore", invalid="ignore"):
        bound = accuracy - alpha - np.sqrt(alpha * (1 - alpha) * log / m) - log / (3 * m)
    return np.where(m > 0, np.maximum(bound, 0.0), np.nan)


def representatives(summary: pd.DataFrame, trials: pd.DataFrame) -> pd.DataFrame:
    """Per σ the trial with the largest ACR (ties: higher clean accuracy, then name):
    columns ``sigma``, ``trial``."""
    table = summary.join(trials.set_index("trial")["sigma"])
    table = table.reset_index().sort_values(["sigma", "acr", "clean_accuracy", "trial"],
                                            ascending=[True, False, False, True])
    return table.groupby("sigma", sort=True).head(1)[["sigma", "trial"]].reset_index(drop=True)


def empirical_accuracy(results: pd.DataFrame) -> pd.DataFrame:
    """The paper's empirical accuracy under attack: per trial and attack ε, the fraction of
    attacked images still classified correctly (abstentions wrong). Columns ``trial``,
    ``epsilon``, ``accuracy``, ``images``."""
    rows = results[results["kind"] == "attack"]
    frame = pd.DataFrame({"trial": rows["trial"].astype(str).to_numpy(),
                          "epsilon": rows["attack_epsilon"].to_numpy(),
                          "predict": rows["predict"].to_numpy(),
                          "correct": rows["correct"].to_numpy()})
    return metrics.empirical_accuracy(frame, by=("trial", "epsilon")).reset_index()


def empirical_envelope(empirical: pd.DataFrame) -> pd.DataFrame:
    """Per attack ε the best trial's empirical accuracy (common.envelope's rule, with no clean
    accuracy to break ties: the earlier name): columns ``epsilon``, ``accuracy``, ``trial``."""
    table = empirical.pivot(index="epsilon", columns="trial", values="accuracy")
    trial = _winners(table, pd.Series(np.nan, index=table.columns))
    return pd.DataFrame({"epsilon": table.index.to_numpy(), "trial": trial}).merge(
        empirical, on=["epsilon", "trial"], how="left")[["epsilon", "accuracy", "trial"]]
