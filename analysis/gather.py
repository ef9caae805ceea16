"""Read sweep folders and a mapping of outside certification logs into one tidy table.

A sweep folder holds ``sweep.yaml`` and ``trials/<trial>/`` with ``trial.json`` (name and
gridded values), ``config.yaml``, ``certify.tsv`` (+ ``certify.tsv.meta.json``), optionally
``attack.tsv``, and ``certify_plan.json`` (``{"planned": N}``: the images the trial worker set
out to certify). A mapping CSV names logs made elsewhere (Cohen et al.'s or SmoothAdv's scripts)
by ``path`` (relative to the CSV) with trial-value columns beside it.

A trial with fewer rows than planned is incomplete: left out of the results (listed with its
status) unless asked for, then kept under a marked name. Without a plan file (sweeps made
before it existed) the plan is unknown and the trial counts as complete: the planned count
depends on the test split's size, which only loading the dataset would tell. Logs of the
mapping count as complete. Files are only read.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from common import layout
from common.errors import UserError

CERTIFY_REQUIRED = ("idx", "label", "predict", "radius", "correct")
ATTACK_REQUIRED = ("idx", "label", "epsilon", "predict", "correct")
DEFAULT_ALPHA = 0.001  # Cohen et al.'s and SmoothAdv's certify default, for logs without one
# Mapping columns that describe the log rather than the trial's gridded values.
_MAPPING_META = ("path", "label", "dataset", "alpha")
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
    ``dataset``, ``alpha``, ``images``, ``planned`` (NA: unknown), ``complete``, ``status``:
    "ok" (its rows are in ``results``) or why not: "missing: …", "incomplete, k/N images" or,
    in a staged sweep, "stopped at stage s: …").
    ``results``: one row per trial × image (``kind`` "certify") and per trial × image × attack
    ε (``kind`` "attack"), with the trial's gridded values as columns.
    ``grid``: the gridded-value column names. ``torn``: files whose torn last line was ignored.
    ``target_radius``: the smallest target radius of sequentially certified trials (None: none
    had one); beyond it their certified accuracies are lower bounds.
    """

    trials: pd.DataFrame
    results: pd.DataFrame
    grid: tuple[str, ...]
    torn: tuple[str, ...]
    target_radius: float | None = None

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


@dataclass
class _Trial:
    name: str
    source: str
    params: dict[str, Any]
    sigma: float | None
    dataset: str | None
    alpha: float
    certify: Path
    attack: Path | None
    planned: int | None = None  # None: unknown, counted as complete
    stopped: str | None = None  # a staged sweep: why the trial was not certified in full
    target_radius: float | None = None  # sequential rows: radii beyond it are lower bounds


def read_rows(path: Path, required: Sequence[str]) -> tuple[pd.DataFrame, bool]:
    """The complete rows of a tab-separated results file, and whether a torn last line (no
    newline: a writer stopped mid-line) was ignored."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})") from None
    complete = raw[: raw.rfind(b"\n") + 1]
    torn = len(complete) != len(raw)
    if not complete.strip():
        return pd.DataFrame(columns=list(required)), torn
    try:
        frame = pd.read_csv(io.BytesIO(complete), sep="\t")
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not a tab-separated results file ({str(e).strip()})") from None
    absent = [c for c in required if c not in frame.columns]
    if absent:
        raise UserError(f"{path}: missing column(s) {', '.join(absent)}; header is "
                        f"{' '.join(map(str, frame.columns))}")
    for column in required:
        values = pd.to_numeric(frame[column], errors="coerce")
        if values.isna().any():
            row = int(np.flatnonzero(values.isna().to_numpy())[0])
            raise UserError(f"{path}: line {row + 2}: column {column} is not a number "
                            f"({frame[column].iloc[row]!r})")
        frame[column] = values
    if "pA_lower" in frame.columns:  # absent from the reference scripts' logs
        frame["pA_lower"] = pd.to_numeric(frame["pA_lower"], errors="coerce")
    return frame, torn


def _load_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: malformed JSON ({e})") from None
    if not isinstance(value, dict):
        raise UserError(f"{path}: expected a JSON object")
    return value


def _load_yaml(path: Path) -> dict[str, Any]:
    try:
        value = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError:
        raise UserError(f"{path}: malformed YAML") from None
    if not isinstance(value, dict):
        raise UserError(f"{path}: expected a YAML mapping")
    return value


def _meta(certify: Path) -> dict[str, Any]:
    meta = layout.meta_path(certify)
    return _load_json(meta) if meta.is_file() else {}


def _planned(path: Path) -> int | None:
    """The images a trial planned to certify, from its ``certify_plan.json``; None without
    one."""
    if not path.is_file():
        return None
    value = _load_json(path).get("planned")
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise UserError(f"{path}: planned: expected a whole number ≥ 0, got {value!r}")
    return value


def _number(value: Any, what: str) -> float | None:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise UserError(f"{what}: expected a number, got {value!r}") from None


def _sweep_trials(folder: Path, qualify: bool) -> list[_Trial]:
    if not (folder / layout.SPEC).is_file() and not (folder / layout.TRIALS).is_dir():
        raise UserError(f"{folder}: not a sweep folder (no {layout.SPEC} and no {layout.TRIALS}/)")
    trials_dir = folder / layout.TRIALS
    found = sorted(p for p in trials_dir.iterdir() if p.is_dir()) if trials_dir.is_dir() else []
    stages = (layout.read_json(folder / layout.STAGES) or {}).get("trials", {})
    trials = []
    for trial_dir in found:
        info_path = trial_dir / layout.TRIAL_INFO
        info = _load_json(info_path) if info_path.is_file() else {}
        params = info.get("params") or {}
        if not isinstance(params, dict):
            raise UserError(f"{info_path}: params: expected a mapping")
        config_path = trial_dir / layout.CONFIG
        config = _load_yaml(config_path) if config_path.is_file() else {}
        certify = trial_dir / layout.CERTIFY
        meta = _meta(certify)
        name = str(info.get("name") or trial_dir.name)
        sigma = params.get("sigma", config.get("sigma", meta.get("sigma")))
        alpha = meta.get("alpha", (config.get("certify") or {}).get("alpha", DEFAULT_ALPHA))
        attack = trial_dir / layout.ATTACK
        trials.append(_Trial(
            name=f"{folder.name}/{name}" if qualify else name,
            source=str(folder), params=params,
            sigma=_number(sigma, f"{trial_dir}: sigma"),
            dataset=config.get("dataset", meta.get("dataset")),
            alpha=float(_number(alpha, f"{trial_dir}: alpha")),
            certify=certify, attack=attack if attack.is_file() else None,
            planned=_planned(trial_dir / layout.CERTIFY_PLAN),
            stopped=_stopped(stages.get(trial_dir.name)),
            target_radius=meta.get("target_radius"),
        ))
    return trials


def _stopped(stage: Any) -> str | None:
    """A staged sweep's record of a trial (sweep.staging): why it stopped, if it did."""
    if not isinstance(stage, dict) or not stage.get("why"):
        return None
    return f"stopped at stage {stage.get('stage')}: {stage['why']}"


def _mapping_trials(csv_path: Path) -> list[_Trial]:
    try:
        mapping = pd.read_csv(csv_path)
    except FileNotFoundError:
        raise UserError(f"{csv_path}: mapping file does not exist") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise UserError(f"{csv_path}: not a CSV mapping ({str(e).strip()})") from None
    if "path" not in mapping.columns:
        raise UserError(f"{csv_path}: needs a 'path' column naming each certification log")
    trials = []
    for number, row in enumerate(mapping.to_dict("records"), start=2):
        where = f"{csv_path}: line {number}"
        if not isinstance(row["path"], str) or not row["path"].strip():
            raise UserError(f"{where}: path is empty")
        log = Path(row["path"])
        log = log if log.is_absolute() else csv_path.parent / log
        if not log.is_file():
            raise UserError(f"{where}: path {row['path']} does not exist (as {log})")
        meta = _meta(log)
        params = {k: v for k, v in row.items() if k not in _MAPPING_META and not pd.isna(v)}
        sigma = _number(params.get("sigma", meta.get("sigma")), f"{where}: sigma")
        if sigma is None:
            raise UserError(f"{where}: sigma unknown for {row['path']}; add a sigma column")
        params["sigma"] = sigma
        alpha = row.get("alpha")
        alpha = meta.get("alpha", DEFAULT_ALPHA) if alpha is None or pd.isna(alpha) else alpha
        dataset = row.get("dataset")
        dataset = meta.get("dataset") if dataset is None or pd.isna(dataset) else dataset
        label = row.get("label")
        name = str(row["path"]) if label is None or pd.isna(label) else str(label)
        trials.append(_Trial(name=name, source=str(csv_path), params=params, sigma=sigma,
                             dataset=dataset, alpha=float(_number(alpha, f"{where}: alpha")),
                             certify=log, attack=None))
    return trials


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
    trials = [t for f in folders for t in _sweep_trials(f, qualify=len(folders) > 1)]
    if logs is not None:
        trials += _mapping_trials(Path(logs))
    names = [t.name for t in trials]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise UserError(f"trial name {duplicates[0]!r} appears twice; give mapping rows a "
                        "distinct label (or analyze the sweeps separately)")
    seen = dict.fromkeys(k for t in trials for k in t.params if k not in _RESERVED)
    grid = [k for k in PAPER_AXES if k in seen or k == "sigma"]
    grid += [k for k in seen if k not in grid]
    rows, parts, torn = [], [], []
    for t in trials:
        cert = _certify_rows(t, torn)
        images = 0 if cert is None else len(cert)
        complete = t.planned is None or images >= t.planned
        name, status = t.name, (t.stopped if cert is None and t.stopped else _status(cert))
        if status == "ok" and not complete:
            if include_incomplete:
                name = f"{t.name} (incomplete {images}/{t.planned})"
            else:
                status = f"incomplete, {images}/{t.planned} images"
        if status == "ok":
            parts += _trial_parts(t, cert, name, torn)
        rows.append({"trial": name, "source": t.source, "dataset": t.dataset,
                     "alpha": t.alpha, "images": images, "planned": t.planned,
                     "complete": complete, "status": status})
    table = pd.DataFrame(rows, columns=["trial", "source", "dataset", "alpha", "images",
                                        "planned", "complete", "status"])
    table = table.astype({"planned": "Int64", "complete": bool})
    for position, key in enumerate(grid, start=2):
        values = [t.sigma if key == "sigma" else _cell(t.params.get(key)) for t in trials]
        table.insert(position, key, _column(values))
    _check_one_dataset(table)
    results = _results(parts, table, grid)
    targets = [t.target_radius for t in trials if t.target_radius is not None]
    return Gathered(trials=table, results=results, grid=tuple(grid), torn=tuple(torn),
                    target_radius=min(targets) if targets else None)


def _certify_rows(t: _Trial, torn: list[str]) -> pd.DataFrame | None:
    """The trial's certification rows (None without a certify file); a torn file's path is
    added to ``torn``."""
    if not t.certify.is_file():
        return None
    if t.sigma is None:
        raise UserError(f"{t.certify.parent}: sigma unknown (not in {layout.TRIAL_INFO}, "
                        f"{layout.CONFIG} or {layout.CERTIFY}{layout.META})")
    cert, was_torn = read_rows(t.certify, CERTIFY_REQUIRED)
    if was_torn:
        torn.append(str(t.certify))
    if cert["idx"].duplicated().any():
        dup = int(cert.loc[cert["idx"].duplicated(), "idx"].iloc[0])
        raise UserError(f"{t.certify}: image idx {dup} appears twice")
    return cert


def _status(cert: pd.DataFrame | None) -> str:
    if cert is None:
        return f"missing: no {layout.CERTIFY}"
    return "ok" if len(cert) else f"missing: {layout.CERTIFY} has no rows yet"


def _trial_parts(t: _Trial, cert: pd.DataFrame, name: str, torn: list[str]
                 ) -> list[pd.DataFrame]:
    """The trial's certify rows and attack rows (if any) for the long results table."""
    parts = [cert.assign(trial=name, kind="certify")]
    if t.attack is not None:
        attack, was_torn = read_rows(t.attack, ATTACK_REQUIRED)
        if was_torn:
            torn.append(str(t.attack))
        parts.append(attack.rename(columns={"epsilon": "attack_epsilon"})
                     .assign(trial=name, kind="attack"))
    return parts


def _check_one_dataset(table: pd.DataFrame) -> None:
    names = sorted(table.loc[table["status"] == "ok", "dataset"].dropna().unique())
    if len(names) > 1:
        raise UserError(f"trials come from several datasets ({', '.join(names)}); analyze one "
                        "dataset at a time")


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
