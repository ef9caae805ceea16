"""The checked rows of a tab-separated results file: a sweep trial's ``certify.tsv`` and
``attack.tsv``, or a certification log made elsewhere (Cohen et al.'s or SmoothAdv's scripts).
Files are only read."""

from __future__ import annotations

import csv
import io
import warnings
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from smoothadv.common import records
from smoothadv.common.errors import UserError
from smoothadv.common.files import file_bytes

CERTIFY_REQUIRED = ("idx", "label", "predict", "radius", "correct")
ATTACK_REQUIRED = ("idx", "label", "epsilon", "predict", "correct")
CERTIFY_KEYS, ATTACK_KEYS = ("idx",), ("idx", "epsilon")  # what makes a row unique


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
