"""Every trial of sweep folders and of a mapping of outside certification logs (found and
checked by analysis.trial_sources), with its rows (analysis.result_rows), in one tidy table.

A trial with fewer rows than planned is incomplete: left out of the results (listed with its
status) unless asked for, then kept under a marked name. Logs of the mapping have no plan and
count as complete. A staged sweep's trial still in stage 3 (its full-test rows not all there)
is drawn on the images stage 2 certified, which every trial of stage 2 has; the envelopes
(curves.choose_and_report) choose on those common images. Files are only read.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from smoothadv.analysis.result_rows import (
    ATTACK_KEYS,
    ATTACK_REQUIRED,
    CERTIFY_KEYS,
    CERTIFY_REQUIRED,
    read_rows,
)
from smoothadv.analysis.trial_sources import FoundTrial, mapping_trials, sweep_trials
from smoothadv.common import layout
from smoothadv.common.errors import UserError

RESULT_COLUMNS = ("kind", "idx", "label", "predict", "radius", "correct", "pA_lower", "time",
                  "attack_epsilon")
# The paper's grid axes, in the order of trial names (pgd-T10-m4-eps0.5-sigma0.25).
PAPER_AXES = ("method", "attack", "steps", "m_train", "epsilon", "sigma")
# Column names of the trial table that gridded values must not shadow.
_RESERVED = {"trial", "source", "dataset", "alpha", "images", "planned", "complete", "status",
             *RESULT_COLUMNS}


@dataclass(frozen=True)
class Gathered:
    """``trials``: one row per trial (``trial``, ``source``, gridded values, ``sigma``,
    ``dataset``, ``alpha``, ``images``, ``planned`` (NA: none planned: a mapping's log, a
    trial without rows or plan, or one in stage 3), ``complete``, ``status``: "ok" (its rows
    are in ``results``) or why not: "missing: …", "incomplete, k/N images" or, in a staged
    sweep, "stopped at stage s: …").
    ``results``: one row per trial × image (``kind`` "certify") and per trial × image × attack
    ε (``kind`` "attack"), with the trial's gridded values as columns.
    ``grid``: the gridded-value column names. ``torn``: files whose torn last line was ignored.
    ``target_radius``: the smallest target radius of sequentially certified trials (None: none
    had one); beyond it their certified accuracies are lower bounds. ``files``: by trial, the
    files its status comes from (its results file, and its plan when it has one).
    ``unfinished``: trials of a staged sweep still in stage 3 (the finer image grid), drawn
    on the images stage 2 certified (their full-test rows are not all there yet).
    """

    trials: pd.DataFrame
    results: pd.DataFrame
    grid: tuple[str, ...]
    torn: tuple[str, ...]
    target_radius: float | None = None
    files: Mapping[str, str] = field(default_factory=dict)
    unfinished: tuple[str, ...] = ()

    @property
    def certified(self) -> pd.DataFrame:
        return self.trials[self.trials["status"] == "ok"]

    @property
    def missing(self) -> pd.DataFrame:
        """Trials left out of ``results``: without rows, or incomplete and not asked for."""
        return self.trials[self.trials["status"] != "ok"]

    @property
    def incomplete(self) -> pd.DataFrame:
        """Trials with rows, but fewer than planned (in ``results`` only if asked for)."""
        return self.trials[~self.trials["complete"] & (self.trials["images"] > 0)]

    @property
    def dataset(self) -> str | None:
        names = self.certified["dataset"].dropna().unique()
        return str(names[0]) if len(names) else None


def _on_grid(cert: pd.DataFrame, grid: tuple[int, int]) -> pd.DataFrame:
    """The rows whose image is on the grid (skip, max): idx % skip == 0 and idx < max (any
    idx when max < 0), as certify.runner.select_indices picks them."""
    skip, top = grid
    idx = cert["idx"].to_numpy()
    return cert[(idx % skip == 0) & ((top < 0) | (idx < top))].reset_index(drop=True)


def _cell(value: Any) -> Any:
    """Grid values as parquet-friendly scalars (lists and mappings as JSON text)."""
    return json.dumps(value, sort_keys=True) if isinstance(value, list | dict) else value


def _column(values: list[Any]) -> pd.Series:
    """One column of gridded values: whole numbers stay integers (nullable where a trial lacks
    the key), mixed text and numbers become text (parquet needs one type per column)."""
    present = [v for v in values if v is not None and not pd.isna(v)]
    kinds = {type(v) for v in present}
    if kinds and all(issubclass(k, int | np.integer) and k is not bool for k in kinds):
        return pd.Series(values, dtype="Int64")
    series = pd.Series(values, dtype=object).infer_objects()
    if series.dtype == object and len(kinds) > 1:
        return series.map(lambda v: None if v is None or pd.isna(v) else str(v))
    return series


def gather(sweeps: Sequence[str | Path], logs: str | Path | None = None,
           include_incomplete: bool = False) -> Gathered:
    """Every trial of ``sweeps`` and every log of the ``logs`` mapping, with its results.

    Trial names get their sweep folder's name as prefix when several sweeps are given; names
    must then be unique. Trials without certification rows, and incomplete ones, get a
    ``status`` saying why they have no results; with ``include_incomplete`` an incomplete
    trial's rows are kept under the name "<trial> (incomplete k/N)".
    """
    folders = [Path(s) for s in sweeps]
    trials = [t for f in folders for t in sweep_trials(f, qualify=len(folders) > 1)]
    if logs is not None:
        trials += mapping_trials(Path(logs))
    names = [t.name for t in trials]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        where = ", ".join(t.named_in for t in trials if t.name == duplicates[0])
        raise UserError(f"trial name {duplicates[0]!r} appears twice ({where}); give mapping "
                        "rows a distinct label (or analyze the sweeps separately)")
    seen = dict.fromkeys(k for t in trials for k in t.params if k not in _RESERVED)
    grid = [k for k in PAPER_AXES if k in seen or k == "sigma"]
    grid += [k for k in seen if k not in grid]
    rows, parts, torn, unfinished = [], [], [], []
    for t in trials:
        row, drawn, in_stage3 = _drawn(t, include_incomplete, torn)
        rows.append(row)
        parts += drawn
        unfinished += [t.name] if in_stage3 else []
    table = pd.DataFrame(rows, columns=["trial", "source", "dataset", "alpha", "images",
                                        "planned", "complete", "status"])
    table = table.astype({"planned": "Int64", "complete": bool})
    for position, key in enumerate(grid, start=2):
        values = [t.sigma if key == "sigma" else _cell(t.params.get(key)) for t in trials]
        table.insert(position, key, _column(values))
    _check_one_dataset(table, {t.name: t.dataset_from for t in trials})
    results = _results(parts, table, grid)
    targets = [t.target_radius for t in trials if t.target_radius is not None]
    return Gathered(trials=table, results=results, grid=tuple(grid), torn=tuple(torn),
                    files={t.name: t.files() for t in trials},
                    target_radius=min(targets) if targets else None,
                    unfinished=tuple(unfinished))


def _drawn(t: FoundTrial, include_incomplete: bool, torn: list[str]
           ) -> tuple[dict[str, Any], list[pd.DataFrame], bool]:
    """The trial's row of the trial table, its parts of the results, and whether it is still
    in stage 3 of a staged sweep: then it is drawn on stage 2's images (all there: a trial
    reaches stage 3 only once stage 2 finished), its planned count unknown (NA)."""
    cert = _certify_rows(t, torn)
    images, planned = (0 if cert is None else len(cert)), t.planned
    complete = planned is None or images >= planned
    in_stage3 = cert is not None and not complete and t.stage2 is not None
    if in_stage3:
        cert = _on_grid(cert, t.stage2)
        images, planned, complete = len(cert), None, True
    name, status = t.name, (t.stopped if cert is None and t.stopped else _status(cert))
    if status == "ok" and not complete:
        if include_incomplete:
            name = f"{t.name} (incomplete {images}/{planned})"
        else:
            status = f"incomplete, {images}/{planned} images"
    parts = _trial_parts(t, cert, name, torn) if status == "ok" else []
    return {"trial": name, "source": t.source, "dataset": t.dataset, "alpha": t.alpha,
            "images": images, "planned": planned, "complete": complete,
            "status": status}, parts, in_stage3 and status == "ok"


def _certify_rows(t: FoundTrial, torn: list[str]) -> pd.DataFrame | None:
    """The trial's certification rows (None without a certify file); a torn file's path is
    added to ``torn``."""
    if not t.certify.is_file():
        return None
    if t.sigma is None:
        raise UserError(f"{t.certify.parent}: sigma unknown (not in {layout.TRIAL_INFO}, "
                        f"{layout.CONFIG} or {layout.CERTIFY}{layout.META})")
    cert, was_torn = read_rows(t.certify, CERTIFY_REQUIRED, CERTIFY_KEYS, sigma=t.sigma,
                               sigma_from=t.sigma_from)
    if was_torn:
        torn.append(str(t.certify))
    return cert


def _status(cert: pd.DataFrame | None) -> str:
    if cert is None:
        return f"missing: no {layout.CERTIFY}"
    return "ok" if len(cert) else f"missing: {layout.CERTIFY} has no rows yet"


def _trial_parts(t: FoundTrial, cert: pd.DataFrame, name: str, torn: list[str]
                 ) -> list[pd.DataFrame]:
    """The trial's certify rows and attack rows (if any) for the long results table."""
    parts = [cert.assign(trial=name, kind="certify")]
    if t.attack is not None:
        attack, was_torn = read_rows(t.attack, ATTACK_REQUIRED, ATTACK_KEYS)
        if was_torn:
            torn.append(str(t.attack))
        parts.append(attack.rename(columns={"epsilon": "attack_epsilon"})
                     .assign(trial=name, kind="attack"))
    return parts


def _check_one_dataset(table: pd.DataFrame, sources: Mapping[str, str]) -> None:
    """Refuse trials of several datasets, naming where the first trial of each says so."""
    drawn = table[table["status"] == "ok"].dropna(subset=["dataset"])
    first = drawn.drop_duplicates("dataset").sort_values("dataset")
    if len(first) > 1:
        named = ", ".join(f"{d} ({sources.get(t, t)})"
                          for d, t in zip(first["dataset"], first["trial"], strict=True))
        raise UserError(f"trials come from several datasets: {named}; analyze one dataset at "
                        "a time")


def _results(parts: list[pd.DataFrame], table: pd.DataFrame, grid: list[str]) -> pd.DataFrame:
    columns = ["trial", *grid, "dataset", *RESULT_COLUMNS]
    if not parts:
        return pd.DataFrame(columns=columns)
    long = pd.concat(parts, ignore_index=True)
    for column in RESULT_COLUMNS:
        if column not in long.columns:
            long[column] = np.nan
    long = long.merge(table[["trial", *grid, "dataset"]], on="trial", how="left")
    long = long[columns]
    for column in ("idx", "label", "predict", "correct"):
        long[column] = long[column].astype("int64")
    for column in ("radius", "pA_lower", "attack_epsilon"):
        long[column] = long[column].astype("float64")
    long["time"] = long["time"].astype("string")  # h:mm:ss.ffffff as written
    long["trial"] = pd.Categorical(long["trial"], categories=table["trial"].tolist())
    return long
