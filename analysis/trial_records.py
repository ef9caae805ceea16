"""The records beside a trial's results, read and checked: ``trial.json`` (name and gridded
values: sweep.trial_driver writes it), ``config.yaml`` (trainers.train writes it) and a results
file's settings record (``certify.tsv.meta.json``: certify.results_file writes it). A value of
the wrong type or range is refused in one UserError line naming the file and the key. Files
are only read."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from smoothadv.common import layout, records
from smoothadv.common.errors import UserError
from smoothadv.common.yaml_input import read_yaml_file

MAX_SIGMA = 100.0  # σ beyond it is no noise level of images (pixels in [0, 1]); the curves'
                   # radius grid (0.01 apart up to 8.3σ: common.records.Z_MAX) stays small


def load_json(path: Path, fix: str = "") -> dict[str, Any]:
    return records.read_object(path, fix) or {}


def load_yaml(path: Path) -> dict[str, Any]:
    value = read_yaml_file(path)
    value = {} if value is None else value
    if not isinstance(value, dict):
        raise UserError(f"{path}: expected a YAML mapping")
    return value


def check(path: Path, record: Mapping[str, Any], rules: Mapping[str, tuple[Callable, str]],
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


def read_meta(results: Path) -> dict[str, Any]:
    """The settings record beside a results file (certify.results_file), its values checked."""
    path = layout.meta_path(results)
    meta = (records.read_object(path, version=layout.META_FORMAT_VERSION) or {}) \
        if path.is_file() else {}
    check(path, meta, META_RULES)
    return meta


def _in_int64(value: Any) -> bool:
    return not isinstance(value, int) or -(1 << 63) <= value < (1 << 63)


def read_trial_info(path: Path) -> tuple[str | None, dict[str, Any]]:
    """The trial's name and gridded values from its ``trial.json`` (sweep.trial_driver writes
    it)."""
    info = load_json(path) if path.is_file() else {}
    check(path, info, {"name": (lambda v: isinstance(v, str) and v.strip() != ""
                                and v.isprintable(), "a trial name")})
    params = info.get("params") or {}
    if not isinstance(params, dict):
        raise UserError(f"{path}: params: expected a mapping")
    for key, value in params.items():
        if not _in_int64(value):
            raise records.corrupt(path, f"params.{key}: {records.shown(value)} is out of range")
    check(path, params, {"sigma": SIGMA}, prefix="params.")
    return info.get("name"), params


def read_config(path: Path) -> dict[str, Any]:
    """The trial's recorded ``config.yaml`` (trainers.train writes it), the keys read here
    checked."""
    config = load_yaml(path) if path.is_file() else {}
    check(path, config, {"sigma": SIGMA, "dataset": TEXT,
                         "certify": (lambda v: isinstance(v, dict), "a mapping")})
    check(path, config.get("certify") or {}, {"alpha": ALPHA}, prefix="certify.")
    return config


def number(value: Any, what: str) -> float | None:
    """``value`` as a float (None: absent or NaN); anything else is a UserError naming
    ``what``."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise UserError(f"{what}: expected a number, got {value!r}") from None
