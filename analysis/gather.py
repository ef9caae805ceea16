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
mapping count as complete. A staged sweep's trial still in stage 3 (its full-test rows not all
there) is drawn on the images stage 2 certified, which every trial of stage 2 has; the
envelopes (curves.choose_and_report) choose on those common images. Files are only read.
"""

from __future__ import annotations

import csv
import io
import json
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from smoothadv.common import layout, records, stage_record
from smoothadv.common.errors import UserError
from smoothadv.common.files import file_bytes
from smoothadv.common.yaml_input import read_yaml_file

CERTIFY_REQUIRED = ("idx", "label", "predict", "radius", "correct")
ATTACK_REQUIRED = ("idx", "label", "epsilon", "predict", "correct")
CERTIFY_KEYS, ATTACK_KEYS = ("idx",), ("idx", "epsilon")  # what makes a row unique
MAX_SIGMA = 100.0  # σ beyond it is no noise level of images (pixels in [0, 1]); the curves'
                   # radius grid (0.01 apart up to 8.3σ: common.records.Z_MAX) stays small
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
    named_in: str = ""  # the file (or mapping line) the name comes from
    sigma_from: str = ""  # the file (or mapping line) σ comes from
    dataset_from: str = ""  # the file (or mapping line) the dataset comes from
    plan: Path | None = None  # its plan file, when it has one
    stage2: tuple[int, int] | None = None  # in stage 3: (skip, max) of stage 2's images

    def files(self) -> str:
        """Its results file, and its plan file when it has one."""
        return str(self.certify) + ("" if self.plan is None else f" (plan: {self.plan})")


def read_rows(path: Path, required: Sequence[str], keys: Sequence[str] = CERTIFY_KEYS,
              sigma: float | None = None, sigma_from: str = "") -> tuple[pd.DataFrame, bool]:
    """The complete rows of a tab-separated results file, and whether a torn last line (no
    newline: a writer stopped mid-line) was ignored. Every row is checked as
    common.records.check_result_rows says (``sigma``: the trial's noise level; ``keys``: the
    columns that make a row unique); the first bad one is one UserError line naming its line."""
    raw = file_bytes(path)
    if raw is None:
        raise UserError(f"{path}: cannot read (file does not exist)")
    complete = raw[: raw.rfind(b"\n") + 1]
    torn = len(complete) != len(raw)
    numbered = [(n, line) for n, line in enumerate(complete.split(b"\n")[:-1], start=1)
                if line.strip()]  # blank lines are skipped, as pandas does
    if not numbered:
        return pd.DataFrame(columns=list(required)), torn
    lines = [n for n, _ in numbered[1:]]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", pd.errors.ParserWarning)
            frame = pd.read_csv(io.BytesIO(b"\n".join(line for _, line in numbered) + b"\n"),
                                sep="\t", quoting=csv.QUOTE_NONE, index_col=False)
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a tab-separated results file (not UTF-8 text)") from None
    except (ValueError, pd.errors.ParserWarning) as e:  # pandas' ParserError is a ValueError
        raise UserError(f"{path}: not a tab-separated results file "
                        f"({_ragged_line(numbered) or records.one_line(str(e).strip())})"
                        ) from None
    if len(frame) != len(lines):  # a carriage return inside a line
        raise UserError(f"{path}: not a tab-separated results file (its rows do not match "
                        "its lines)")
    absent = [c for c in required if c not in frame.columns]
    if absent:
        raise UserError(records.one_line(
            f"{path}: missing column(s) {', '.join(absent)}; header is "
            f"{' '.join(map(str, frame.columns))}"))
    frame = records.check_result_rows(frame, path, lines, numeric=required, keys=keys,
                                      sigma=sigma, sigma_from=sigma_from)
    if "pA_lower" in frame.columns:  # absent from the reference scripts' logs
        frame["pA_lower"] = pd.to_numeric(frame["pA_lower"], errors="coerce")
    return frame, torn


def _ragged_line(numbered: list[tuple[int, bytes]]) -> str | None:
    """"line N has K fields, the header H" for the first line whose field count is not the
    header's (None: every line has the header's)."""
    fields = [line.count(b"\t") + 1 for _, line in numbered]
    for (number, _), count in zip(numbered[1:], fields[1:], strict=True):
        if count != fields[0]:
            return f"line {number} has {count} fields, the header {fields[0]}"
    return None


def _load_json(path: Path, fix: str = "") -> dict[str, Any]:
    return records.read_object(path, fix) or {}


def _load_yaml(path: Path) -> dict[str, Any]:
    value = read_yaml_file(path)
    value = {} if value is None else value
    if not isinstance(value, dict):
        raise UserError(f"{path}: expected a YAML mapping")
    return value


def _check(path: Path, record: Mapping[str, Any], rules: Mapping[str, tuple[Callable, str]],
           prefix: str = "") -> None:
    """Refuse ``record`` (read from ``path``) when a key of ``rules`` is present (and not
    null) with a value its check refuses: one line naming the file and the key."""
    for key, (ok, expected) in rules.items():
        value = record.get(key)
        if value is not None and not ok(value):
            raise records.corrupt(path, f"{prefix}{key}: expected {expected}, got "
                                  f"{records.shown(value)}")


def _is_sigma(v: Any) -> bool:
    return records.finite(v) and 0 < v <= MAX_SIGMA


def _is_alpha(v: Any) -> bool:
    return records.finite(v) and 0 < v < 1


SIGMA = (_is_sigma, f"a noise level in (0, {MAX_SIGMA:g}]")
ALPHA = (_is_alpha, "a failure probability in (0, 1)")
TEXT = (lambda v: isinstance(v, str), "text")
META_RULES = {"sigma": SIGMA, "alpha": ALPHA, "dataset": TEXT,
              "target_radius": (lambda v: records.finite(v) and v >= 0, "a radius ≥ 0")}


def _meta(certify: Path) -> dict[str, Any]:
    """The settings record beside a results file (certify.results_file), its values checked."""
    path = layout.meta_path(certify)
    meta = _load_json(path) if path.is_file() else {}
    _check(path, meta, META_RULES)
    return meta


def _in_int64(value: Any) -> bool:
    return not isinstance(value, int) or -(1 << 63) <= value < (1 << 63)


def _trial_info(path: Path) -> tuple[str | None, dict[str, Any]]:
    """The trial's name and gridded values from its ``trial.json`` (sweep.run writes it)."""
    info = _load_json(path) if path.is_file() else {}
    _check(path, info, {"name": (lambda v: isinstance(v, str) and v.strip() != ""
                                 and v.isprintable(), "a trial name")})
    params = info.get("params") or {}
    if not isinstance(params, dict):
        raise UserError(f"{path}: params: expected a mapping")
    for key, value in params.items():
        if not _in_int64(value):
            raise records.corrupt(path, f"params.{key}: {records.shown(value)} is out of range")
    _check(path, params, {"sigma": SIGMA}, prefix="params.")
    return info.get("name"), params


def _config(path: Path) -> dict[str, Any]:
    """The trial's recorded ``config.yaml`` (trainers.train writes it), the keys read here
    checked."""
    config = _load_yaml(path) if path.is_file() else {}
    _check(path, config, {"sigma": SIGMA, "dataset": TEXT,
                          "certify": (lambda v: isinstance(v, dict), "a mapping")})
    _check(path, config.get("certify") or {}, {"alpha": ALPHA}, prefix="certify.")
    return config


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
    record = stage_record.read(folder)
    stages = record["trials"] if record is not None else {}
    trials = []
    for trial_dir in found:
        info_path, config_path = trial_dir / layout.TRIAL_INFO, trial_dir / layout.CONFIG
        name, params = _trial_info(info_path)
        config = _config(config_path)
        certify = trial_dir / layout.CERTIFY
        meta = _meta(certify)
        sigma_from = (info_path if "sigma" in params else config_path if "sigma" in config
                      else layout.meta_path(certify))
        plan = trial_dir / layout.CERTIFY_PLAN
        sigma = params.get("sigma", config.get("sigma", meta.get("sigma")))
        alpha = meta.get("alpha", (config.get("certify") or {}).get("alpha", DEFAULT_ALPHA))
        attack = trial_dir / layout.ATTACK
        trials.append(_Trial(
            name=f"{folder.name}/{name or trial_dir.name}" if qualify else name or trial_dir.name,
            source=str(folder), params=params,
            sigma=_number(sigma, f"{trial_dir}: sigma"),
            dataset=config.get("dataset", meta.get("dataset")),
            alpha=float(_number(alpha, f"{trial_dir}: alpha")),
            certify=certify, attack=attack if attack.is_file() else None,
            planned=records.read_plan(plan),
            stopped=_stopped(stages.get(trial_dir.name)),
            stage2=_stage2_grid(stages.get(trial_dir.name), config, config_path),
            target_radius=meta.get("target_radius"),
            named_in=str(info_path if name else trial_dir), sigma_from=str(sigma_from),
            dataset_from=str(config_path if "dataset" in config else layout.meta_path(certify)),
            plan=plan if plan.is_file() else None,
        ))
    return trials


def _stopped(stage: Any) -> str | None:
    """A staged sweep's record of a trial (sweep.staging): why it stopped, if it did."""
    if not isinstance(stage, dict) or not stage.get("why"):
        return None
    return f"stopped at stage {stage.get('stage')}: {stage['why']}"


def _stage2_grid(stage: Any, config: Mapping[str, Any], path: Path) -> tuple[int, int] | None:
    """For a trial a staged sweep took to stage 3 (sweep.staging), the (skip, max) of the
    images stage 2 certified: its recorded ``certify`` block (stage 3 only lowers the skip);
    None for any other trial."""
    if not isinstance(stage, dict) or stage.get("stage") != stage_record.LAST or stage.get("why"):
        return None
    certify = config.get("certify") or {}
    _check(path, certify, {"skip": (lambda v: records.whole(v, 1, 1 << 63), "a whole number ≥ 1"),
                           "max": (lambda v: records.whole(v, -(1 << 63), 1 << 63),
                                   "a whole number")}, prefix="certify.")
    return certify.get("skip", 1), certify.get("max", -1)


def _on_grid(cert: pd.DataFrame, grid: tuple[int, int]) -> pd.DataFrame:
    """The rows whose image is on the grid (skip, max): idx % skip == 0 and idx < max (any
    idx when max < 0), as certify.runner.select_indices picks them."""
    skip, top = grid
    idx = cert["idx"].to_numpy()
    return cert[(idx % skip == 0) & ((top < 0) | (idx < top))].reset_index(drop=True)


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
        _check(Path(where), {"sigma": sigma, "alpha": _number(alpha, f"{where}: alpha"),
                             "dataset": dataset}, {"sigma": SIGMA, "alpha": ALPHA,
                                                   "dataset": TEXT})
        label = row.get("label")
        name = str(row["path"]) if label is None or pd.isna(label) else str(label)
        trials.append(_Trial(name=name, source=str(csv_path), params=params, sigma=sigma,
                             dataset=dataset, alpha=float(_number(alpha, f"{where}: alpha")),
                             certify=log, attack=None, named_in=where, sigma_from=where,
                             dataset_from=where))
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


def _drawn(t: _Trial, include_incomplete: bool, torn: list[str]
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


def _certify_rows(t: _Trial, torn: list[str]) -> pd.DataFrame | None:
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


def _trial_parts(t: _Trial, cert: pd.DataFrame, name: str, torn: list[str]
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
