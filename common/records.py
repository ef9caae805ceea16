"""Validated readers of the records a sweep folder holds (common.layout says where each lives).

Sweep folders live on shared file systems and in buckets, so their files are input like any
other: each reader here returns the record in the form its writer wrote it, None (or nothing)
when the file is absent, and refuses anything else with one UserError line that names the file
(and, in a line-per-record file, the line), says what is wrong and what to do about it.

- **absent** (no file): legitimately not written yet. A trial without ``state.json`` has not
  started, one without ``metrics.jsonl`` has no finished epoch, a sweep without
  ``driver.json`` has no driver running, one without ``stages.json`` is not staged.
- **corrupt** (present but unreadable or of the wrong shape): refused. The JSON records are
  written whole (common.atomic), so a half-written one is not a state they can be in. Only
  the append-only files (``metrics.jsonl``, the results TSVs) may end in a torn last line, one
  without its newline (a writer killed mid-line): it is ignored, as their writers do when they
  resume; a complete line that is invalid is refused.

Results rows (the certify, predict and attack TSVs: certify.results_file writes them,
analysis.result_rows reads them) are checked by :func:`check_result_rows`. Imports neither torch
nor Ray.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from smoothadv.common.errors import UserError
from smoothadv.common.files import file_bytes
from smoothadv.common.layout import RECORD_VERSION

STATES = ("RUNNING", "TERMINATED", "STOPPED", "ERROR", "INTERRUPTED")  # what state.json holds
MAX_EPOCH = 1 << 31
ABSTAIN = -1  # the ``predict`` of an abstention (certify.smooth.ABSTAIN)
MAX_INDEX = 1 << 53  # image indices: whole numbers a float64 holds exactly
MAX_CLASS = 1 << 31
# σ·Φ⁻¹(pA) is the radius CERTIFY reports: Φ⁻¹ of the largest float below 1 is 8.21, so no
# certified radius exceeds 8.21σ; beyond Z_MAX·σ a row was not written by a certification.
Z_MAX = 8.3

STATE_FIX = ("a trial's state record, written whole, so damaged: remove it to let `smoothadv "
             "sweep resume` run the trial again (from its checkpoint)")
DRIVER_FIX = "the sweep driver's record, damaged: if no driver runs, remove it"
PLAN_FIX = ("a trial's certification plan, damaged: remove it (the trial writes it again when "
            "it next certifies)")


def shown(value: Any, limit: int = 60) -> str:
    """``repr(value)`` on one line, cut to about ``limit`` characters (numpy scalars shown as
    the Python numbers they hold)."""
    text = repr(value.item() if isinstance(value, np.generic) else value)
    return text if len(text) <= limit else text[:limit] + "…"


def whole(value: Any, low: int, high: int | None = None) -> bool:
    """Whether ``value`` is an int (not a bool) in [low, high)."""
    return (isinstance(value, int) and not isinstance(value, bool) and value >= low
            and (high is None or value < high))


def finite(value: Any) -> bool:
    """Whether ``value`` is a finite int or float (not a bool)."""
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value))


def parse_json(data: bytes | str) -> tuple[Any, str | None]:
    """(value, None), or (None, why ``data`` is not JSON)."""
    try:
        return json.loads(data), None
    except UnicodeDecodeError:
        return None, "not UTF-8 text"
    except RecursionError:
        return None, "JSON nested too deep"
    except ValueError as e:
        return None, f"malformed JSON ({str(e).splitlines()[0] if str(e) else '?'})"


def json_kind(value: Any) -> str:
    """What a JSON value is, in words ("a list", "text", "null", ...)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    return {dict: "an object", list: "a list", str: "text"}.get(type(value), "a number")


def read_object(path: str | Path, fix: str = "",
                version: int = RECORD_VERSION) -> dict[str, Any] | None:
    """The JSON object in ``path``, of format ``version`` (its ``format_version``); None when
    the file is absent. Anything else is refused, naming the file, with ``fix`` (what the
    file is and what to do) said after it; a record of another format names both versions."""
    data = file_bytes(path)
    if data is None:
        return None
    value, problem = parse_json(data)
    if problem is None and not isinstance(value, dict):
        problem = f"expected a JSON object, found {json_kind(value)}"
    if problem is not None:
        raise corrupt(path, problem, fix)
    check_version(path, value.get("format_version"), version)
    return value


def check_version(path: str | Path, found: Any, version: int) -> None:
    """Refuse a record of ``path`` whose format version (``found``) is not ``version``."""
    if type(found) is not int or found != version:
        raise UserError(one_line(f"{path}: format_version {shown(found)}, this smoothadv "
                                 f"reads {version}"))


def corrupt(path: str | Path, problem: str, fix: str = "") -> UserError:
    """The one-line refusal of a corrupt record: the file, what is wrong, what to do (line
    breaks a hostile name or value brings are shown escaped, so it stays one line)."""
    return UserError(one_line(f"{path}: {problem}" + (f"; {fix}" if fix else "")))


def one_line(text: str) -> str:
    """``text`` with its line breaks (and other control characters) escaped."""
    return "".join(c if c.isprintable() or c == "\t" else repr(c)[1:-1] for c in text)


def _optional(record: Mapping[str, Any], key: str, ok, expected: str) -> str | None:
    if key in record and not ok(record[key]):
        return f"{key}: expected {expected}, got {shown(record[key])}"
    return None


def _first(*problems: str | None) -> str | None:
    return next((p for p in problems if p is not None), None)


# --- a trial's state.json -----------------------------------------------------------------


def state_problem(record: Mapping[str, Any]) -> str | None:
    """What is wrong with a state.json record (None: nothing)."""
    if record.get("state") not in STATES:
        return (f"state: expected one of {', '.join(STATES)}, got "
                f"{shown(record.get('state')) if 'state' in record else 'none'}")
    text = lambda v: isinstance(v, str)  # noqa: E731
    time = lambda v: finite(v) and v >= 0  # noqa: E731
    return _first(*(_optional(record, k, text, "text") for k in ("error", "why", "trial_id")),
                  *(_optional(record, k, time, "a Unix time") for k in ("started_at",
                                                                         "ended_at")))


def read_state(path: str | Path) -> dict[str, Any] | None:
    """A trial's state.json ({"state": one of STATES, "error", "why", "trial_id",
    "started_at", "ended_at"}); None when the trial has none (it has not started)."""
    record = read_object(path, STATE_FIX)
    if record is not None:
        problem = state_problem(record)
        if problem is not None:
            raise corrupt(path, problem, STATE_FIX)
    return record


# --- a trial's metrics.jsonl --------------------------------------------------------------


def _metrics_line(line: bytes) -> tuple[dict[str, Any] | None, str | None]:
    value, problem = parse_json(line)
    if problem is not None:
        return None, problem
    if not isinstance(value, dict):
        return None, f"expected a JSON object, found {json_kind(value)}"
    if not whole(value.get("epoch"), 0, MAX_EPOCH):
        return None, (f"epoch: expected a whole number ≥ 0, got "
                      f"{shown(value.get('epoch')) if 'epoch' in value else 'none'}")
    return value, None


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The epochs of a trial's metrics.jsonl, one JSON object per line with its ``epoch`` (a
    whole number ≥ 0); [] when it has none. Blank lines are skipped; a torn last line (no
    newline) is ignored unless it holds a whole record (only its newline is missing); any
    other line that is not a record is refused, naming the line."""
    data = file_bytes(path)
    if data is None:
        return []
    *lines, last = data.split(b"\n")
    epochs = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        record, problem = _metrics_line(line)
        if problem is not None:
            raise corrupt(path, f"line {number}: {problem}", "a trial's log of its epochs (a "
                          "JSON object with its epoch per line): fix or delete that line")
        epochs.append(record)
    if last.strip():
        record, problem = _metrics_line(last)
        if problem is None:
            epochs.append(record)
    return epochs


# --- the sweep's driver.json --------------------------------------------------------------


def _process(value: Any) -> bool:
    return (isinstance(value, list | tuple) and len(value) == 2 and whole(value[0], 1)
            and whole(value[1], -1))


def read_driver(path: str | Path) -> dict[str, Any] | None:
    """The sweep driver's record ({"pid", "start", "host", "token", "ray_processes":
    [[pid, start], ...], "heartbeat"}: sweep.driver_record); None when no driver wrote one."""
    record = read_object(path, DRIVER_FIX)
    if record is None:
        return None
    problem = _first(
        None if whole(record.get("pid"), 1) else f"pid: expected a process id, got "
        f"{shown(record.get('pid'))}",
        None if whole(record.get("start"), -1) else f"start: expected a whole number, got "
        f"{shown(record.get('start'))}",
        None if isinstance(record.get("host"), str) else f"host: expected a host name, got "
        f"{shown(record.get('host'))}",
        _optional(record, "token", lambda v: isinstance(v, str), "text"),
        _optional(record, "heartbeat", lambda v: finite(v) and v >= 0, "a Unix time"),
        _optional(record, "ray_processes",
                  lambda v: isinstance(v, list) and all(_process(p) for p in v),
                  "a list of [pid, start time] pairs"))
    if problem is not None:
        raise corrupt(path, problem, DRIVER_FIX)
    return record


# --- a trial's certify_plan.json ----------------------------------------------------------


def read_plan(path: str | Path) -> int | None:
    """The images a trial planned to certify ({"planned": N}: certify_plan.json and
    certify_stage1_plan.json); None without a plan file."""
    record = read_object(path, PLAN_FIX)
    if record is None:
        return None
    planned = record.get("planned")
    if not whole(planned, 0, MAX_INDEX):
        got = shown(planned) if "planned" in record else "none"
        raise corrupt(path, f"planned: expected a whole number ≥ 0, got {got}",
                      PLAN_FIX)
    return planned


# --- results rows (certify, predict, attack TSVs) -----------------------------------------


def _integral(values: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        return np.isfinite(values) & (np.floor(values) == values)


def _row_problems(frame: pd.DataFrame, sigma: float | None, sigma_from: str
                  ) -> list[tuple[np.ndarray, str, str]]:
    """(bad-row mask, column, what it must be) for each rule of the columns ``frame`` has
    (numbers)."""
    rules: list[tuple[np.ndarray, str, str]] = []

    def col(name: str) -> np.ndarray:
        return frame[name].to_numpy(dtype=float)

    if "idx" in frame:
        v = col("idx")
        rules.append((~(_integral(v) & (v >= 0) & (v < MAX_INDEX)), "idx",
                      "an image index must be a whole number ≥ 0"))
    if "label" in frame:
        v = col("label")
        rules.append((~(_integral(v) & (v >= 0) & (v < MAX_CLASS)), "label",
                      "a label must be a class, a whole number ≥ 0"))
    if "predict" in frame:
        v = col("predict")
        rules.append((~(_integral(v) & (v >= ABSTAIN) & (v < MAX_CLASS)), "predict",
                      f"a prediction must be a class or {ABSTAIN} (abstain)"))
    if "correct" in frame:
        v = col("correct")
        rules.append((~((v == 0) | (v == 1)), "correct", "must be 0 or 1"))
        if "predict" in frame and "label" in frame:
            right = (col("predict") == col("label")).astype(float)
            rules.append((v != right, "correct",
                          "must be 1 exactly when predict equals label"))
    if "radius" in frame:
        v = col("radius")
        rules.append((~(np.isfinite(v) & (v >= 0)), "radius", "must be a finite number ≥ 0"))
        if "predict" in frame:
            rules.append(((col("predict") == ABSTAIN) & (v != 0), "radius",
                          "an abstention (predict -1) certifies radius 0"))
        if sigma is not None:
            source = f" (σ from {sigma_from})" if sigma_from else ""
            rules.append((v > Z_MAX * sigma, "radius",
                          f"more than {Z_MAX}·σ = {Z_MAX * sigma:g}, beyond any radius "
                          f"σ={sigma:g} certifies (σ·Φ⁻¹(pA) with pA < 1){source}; is σ right?"))
    if "epsilon" in frame:
        v = col("epsilon")
        rules.append((~(np.isfinite(v) & (v >= 0)), "epsilon",
                      "an attack radius must be a finite number ≥ 0"))
    if "samples" in frame:
        v = col("samples")
        rules.append((~(_integral(v) & (v >= 0)), "samples", "must be a whole number ≥ 0"))
    return rules


def check_result_rows(frame: pd.DataFrame, path: str | Path, lines: Sequence[int],
                      numeric: Sequence[str], keys: Sequence[str] = ("idx",),
                      sigma: float | None = None, sigma_from: str = "") -> pd.DataFrame:
    """``frame`` (a results file's rows as read, ``lines[i]``: the line number of row i) with
    the columns ``numeric`` made numbers, every row checked: idx, label, predict, correct,
    radius, epsilon and samples, those it has, as a certification, a prediction or an attack
    writes them (``sigma``: the trial's noise level, bounding the radius), and the ``keys``
    columns unique. The first bad row is one UserError line naming ``path`` and its line."""
    frame = frame.copy()
    for column in numeric:
        values = pd.to_numeric(frame[column], errors="coerce")
        if values.isna().any():
            row = int(np.flatnonzero(values.isna().to_numpy())[0])
            raise UserError(f"{path}: line {lines[row]}: column {column} is not a number "
                            f"({shown(frame[column].iloc[row])})")
        frame[column] = values
    checked = frame[[c for c in numeric if c in frame]]
    bad_rows = [(int(np.flatnonzero(mask)[0]), column, why)
                for mask, column, why in _row_problems(checked, sigma, sigma_from)
                if mask.any()]
    if bad_rows:
        row, column, why = min(bad_rows, key=lambda item: item[0])
        raise UserError(f"{path}: line {lines[row]}: {column} is {shown(frame[column].iloc[row])}"
                        f": {why}")
    keys = [k for k in keys if k in frame]
    if keys:
        repeated = frame.duplicated(subset=keys).to_numpy()
        if repeated.any():
            row = int(np.flatnonzero(repeated)[0])
            what = ", ".join(f"{k} {frame[k].iloc[row]:g}" for k in keys)
            raise UserError(f"{path}: line {lines[row]}: the row of {what} appears twice")
    return frame
