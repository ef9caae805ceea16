"""The trials to analyze, found in sweep folders and in a mapping of outside certification
logs, each with the files its rows come from and its values (gridded values, σ, dataset, α,
planned images), every record checked (analysis.trial_records).

A sweep folder holds ``sweep.yaml`` and ``trials/<trial>/`` with ``trial.json`` (name and
gridded values), ``config.yaml``, ``certify.tsv`` (+ ``certify.tsv.meta.json``), optionally
``attack.tsv``, and ``certify_plan.json`` (``{"planned": N}``: the images the trial worker set
out to certify; it writes the plan before the first row, so a ``certify.tsv`` without one is
no trial folder of smoothadv's and is refused). A mapping CSV names logs made elsewhere
(Cohen et al.'s or SmoothAdv's scripts) by ``path`` (relative to the CSV) with trial-value
columns beside it; they have no plan. Files are only read.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from smoothadv.analysis.trial_records import (
    ALPHA,
    SIGMA,
    TEXT,
    check,
    number,
    read_config,
    read_meta,
    read_trial_info,
)
from smoothadv.common import layout, records, stages_file
from smoothadv.common.errors import UserError

DEFAULT_ALPHA = 0.001  # Cohen et al.'s and SmoothAdv's certify default, for logs without one
# Mapping columns that describe the log rather than the trial's gridded values.
MAPPING_META = ("path", "label", "dataset", "alpha")


@dataclass
class FoundTrial:
    """A trial of a sweep folder or a log of a mapping, before its rows are read."""

    name: str
    source: str
    params: dict[str, Any]
    sigma: float | None
    dataset: str | None
    alpha: float
    certify: Path
    attack: Path | None
    planned: int | None = None  # None: a mapping's log (complete), or not certified yet
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


def sweep_trials(folder: Path, qualify: bool) -> list[FoundTrial]:
    """The trials of the sweep ``folder``; with ``qualify`` their names get the folder's name
    as prefix."""
    if not (folder / layout.SPEC).is_file() and not (folder / layout.TRIALS).is_dir():
        raise UserError(f"{folder}: not a sweep folder (no {layout.SPEC} and no {layout.TRIALS}/)")
    trials_dir = folder / layout.TRIALS
    found = sorted(p for p in trials_dir.iterdir() if p.is_dir()) if trials_dir.is_dir() else []
    record = stages_file.read(folder)
    stages = record["trials"] if record is not None else {}
    trials = []
    for trial_dir in found:
        info_path, config_path = trial_dir / layout.TRIAL_INFO, trial_dir / layout.CONFIG
        name, params = read_trial_info(info_path)
        config = read_config(config_path)
        certify = trial_dir / layout.CERTIFY
        meta = read_meta(certify)
        sigma_from = (info_path if "sigma" in params else config_path if "sigma" in config
                      else layout.meta_path(certify))
        plan = _plan(trial_dir, certify)
        sigma = params.get("sigma", config.get("sigma", meta.get("sigma")))
        alpha = meta.get("alpha", (config.get("certify") or {}).get("alpha", DEFAULT_ALPHA))
        attack = trial_dir / layout.ATTACK
        trials.append(FoundTrial(
            name=f"{folder.name}/{name or trial_dir.name}" if qualify else name or trial_dir.name,
            source=str(folder), params=params,
            sigma=number(sigma, f"{trial_dir}: sigma"),
            dataset=config.get("dataset", meta.get("dataset")),
            alpha=float(number(alpha, f"{trial_dir}: alpha")),
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


def _plan(trial_dir: Path, certify: Path) -> Path:
    """The trial's plan file; a results file without one is refused (the trial worker writes
    the plan before the first row)."""
    plan = trial_dir / layout.CERTIFY_PLAN
    if certify.is_file() and not plan.is_file():
        raise UserError(f"{certify}: no {layout.CERTIFY_PLAN} beside it (a sweep's trial "
                        "worker writes one before the first row): not a trial folder of this "
                        "smoothadv")
    return plan


def _stopped(stage: Any) -> str | None:
    """A staged sweep's record of a trial (sweep.staged_sweep): why it stopped, if it did."""
    if not isinstance(stage, dict) or not stage.get("why"):
        return None
    return f"stopped at stage {stage.get('stage')}: {stage['why']}"


def _stage2_grid(stage: Any, config: Mapping[str, Any], path: Path) -> tuple[int, int] | None:
    """For a trial a staged sweep took to stage 3 (sweep.staged_sweep), the (skip, max) of the
    images stage 2 certified: its recorded ``certify`` block (stage 3 only lowers the skip);
    None for any other trial."""
    if not isinstance(stage, dict) or stage.get("stage") != stages_file.LAST or stage.get("why"):
        return None
    certify = config.get("certify") or {}
    check(path, certify, {"skip": (lambda v: records.whole(v, 1, 1 << 63), "a whole number ≥ 1"),
                          "max": (lambda v: records.whole(v, -(1 << 63), 1 << 63),
                                  "a whole number")}, prefix="certify.")
    return certify.get("skip", 1), certify.get("max", -1)


def mapping_trials(csv_path: Path) -> list[FoundTrial]:
    """The logs the mapping CSV ``csv_path`` names, one per line, with their values."""
    try:
        mapping = pd.read_csv(csv_path)
    except FileNotFoundError:
        raise UserError(f"{csv_path}: mapping file does not exist") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise UserError(f"{csv_path}: not a CSV mapping ({str(e).strip()})") from None
    if "path" not in mapping.columns:
        raise UserError(f"{csv_path}: needs a 'path' column naming each certification log")
    trials = []
    for line, row in enumerate(mapping.to_dict("records"), start=2):
        where = f"{csv_path}: line {line}"
        if not isinstance(row["path"], str) or not row["path"].strip():
            raise UserError(f"{where}: path is empty")
        log = Path(row["path"])
        log = log if log.is_absolute() else csv_path.parent / log
        if not log.is_file():
            raise UserError(f"{where}: path {row['path']} does not exist (as {log})")
        meta = read_meta(log)
        params = {k: v for k, v in row.items() if k not in MAPPING_META and not pd.isna(v)}
        sigma = number(params.get("sigma", meta.get("sigma")), f"{where}: sigma")
        if sigma is None:
            raise UserError(f"{where}: sigma unknown for {row['path']}; add a sigma column")
        params["sigma"] = sigma
        alpha = row.get("alpha")
        alpha = meta.get("alpha", DEFAULT_ALPHA) if alpha is None or pd.isna(alpha) else alpha
        dataset = row.get("dataset")
        dataset = meta.get("dataset") if dataset is None or pd.isna(dataset) else dataset
        check(Path(where), {"sigma": sigma, "alpha": number(alpha, f"{where}: alpha"),
                            "dataset": dataset}, {"sigma": SIGMA, "alpha": ALPHA,
                                                  "dataset": TEXT})
        label = row.get("label")
        name = str(row["path"]) if label is None or pd.isna(label) else str(label)
        trials.append(FoundTrial(name=name, source=str(csv_path), params=params, sigma=sigma,
                                 dataset=dataset, alpha=float(number(alpha, f"{where}: alpha")),
                                 certify=log, attack=None, named_in=where, sigma_from=where,
                                 dataset_from=where))
    return trials
