"""Append-only, resumable TSV output: one row per image, flushed and fsynced as written.

The columns start with those of Cohen et al.'s scripts (``idx label predict radius correct
time``), so their analysis tools read our files. The settings that produced the rows live beside
the file in ``FILE.meta.json``, with its ``format_version`` (common.layout.META_FORMAT_VERSION;
a record of another version, or of none, is refused in one line naming it and both versions);
re-opening with other settings is refused, re-opening with the same settings resumes after the
last complete row. A torn last line (a crash mid-write) is cut off, never duplicated. Rows
are keyed by ``idx`` unless the writer names other key columns (the empirical attack keys them
by ``(idx, epsilon)``). The record also lists, under ``provenance``, the versions of every run
that wrote rows (common.provenance).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from smoothadv.common.atomic import atomic_write_bytes
from smoothadv.common.errors import UserError
from smoothadv.common.layout import META_FORMAT_VERSION, meta_path
from smoothadv.common.records import (
    check_result_rows,
    corrupt,
    finite,
    read_object,
    shown,
)

# Columns whose values are numbers, checked when a file is resumed (common.records).
NUMERIC = ("idx", "label", "predict", "radius", "correct", "epsilon", "samples")
META_FIX = "the settings record of its results file, damaged: choose another --out"
# What a settings record holds besides the settings: never compared on resume.
NOT_SETTINGS = ("format_version", "provenance")


def _format(value: Any) -> str:
    # repr() of a float is the shortest string that reads back to the same float.
    return repr(value) if isinstance(value, float) else str(value)


def recorded_settings(path: str | Path) -> dict[str, Any] | None:
    """The settings record beside the results file ``path`` (None: there is none); anything but
    a JSON object of :data:`META_FORMAT_VERSION` is one UserError line naming it."""
    meta = meta_path(Path(path))
    recorded = read_object(meta, META_FIX, version=META_FORMAT_VERSION)
    if recorded is not None and not isinstance(recorded.get("provenance", []), list):
        raise corrupt(meta, f"provenance: expected a list, got "
                      f"{shown(recorded['provenance'])}", META_FIX)
    return recorded


class ResultsFile:
    """An open TSV results file; ``done`` holds the key of every complete row.

    ``key_columns`` maps each key column to the parser of its text (default ``{"idx": int}``).
    With one key column a key is that column's value (``12``), with several a tuple of them
    (``(12, 0.5)``).
    """

    def __init__(self, path: str | Path, columns: Sequence[str], settings: Mapping[str, Any],
                 key_columns: Mapping[str, Callable[[str], Any]] | None = None,
                 provenance: Mapping[str, Any] | None = None):
        self.path = Path(path)
        self.provenance = dict(provenance or {})
        self.columns = tuple(columns)
        self.settings = dict(settings)
        self.key_columns = dict(key_columns or {"idx": int})
        unknown = set(self.key_columns) - set(self.columns)
        if unknown:
            raise ValueError(f"key columns {sorted(unknown)} are not among {self.columns}")
        self.repaired_torn_line = False
        self.done: set[Any] = set()
        if self.path.exists() and self.path.stat().st_size > 0:
            self._check_settings()
            self._load_existing()
            self._add_provenance()
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(meta_path(self.path), self._settings_bytes)
            atomic_write_bytes(self.path, lambda f: f.write(self._line(self.columns)))
        self._file = open(self.path, "a", encoding="utf-8", newline="")

    def _settings_bytes(self, f) -> None:
        record = {"format_version": META_FORMAT_VERSION, **self.settings,
                  **({"provenance": [self.provenance]} if self.provenance else {})}
        f.write(json.dumps(record, indent=2, sort_keys=True).encode() + b"\n")

    def _recorded(self) -> dict[str, Any] | None:
        return recorded_settings(self.path)

    def _add_provenance(self) -> None:
        """A resumed run adds the versions it runs with to the record's ``provenance`` list
        when they differ from every earlier run's (they are never compared like settings)."""
        meta = meta_path(self.path)
        recorded = self._recorded() or {}
        runs = recorded.get("provenance", [])
        if not self.provenance or self.provenance in runs:
            return
        data = json.dumps({**recorded, "provenance": [*runs, self.provenance]}, indent=2,
                          sort_keys=True).encode() + b"\n"
        atomic_write_bytes(meta, lambda f: f.write(data))

    @staticmethod
    def _line(values: Sequence[Any]) -> bytes:
        return ("\t".join(_format(v) for v in values) + "\n").encode()

    def _key(self, text: Mapping[str, str]) -> Any:
        """The key of a row given as its fields' text (raises ValueError when unparsable)."""
        key = tuple(parse(text[c]) for c, parse in self.key_columns.items())
        return key[0] if len(key) == 1 else key

    def _check_settings(self) -> None:
        meta = meta_path(self.path)
        recorded = self._recorded()
        if recorded is None:
            raise UserError(
                f"{self.path}: exists without its settings record {meta.name}; "
                "refusing to append to it (choose another --out)"
            )
        for key in recorded:
            if key not in self.settings and key not in NOT_SETTINGS:
                raise UserError(
                    f"{self.path}: was written with {key}={recorded[key]!r}, which this run "
                    "does not set; resume with the same settings or choose another --out"
                )
        for key, value in self.settings.items():
            if key not in recorded:
                raise UserError(
                    f"{self.path}: its settings record {meta.name} has no {key}, this run asks "
                    f"for {key}={value!r}; resume with the same settings or choose another --out"
                )
            if recorded[key] != value:
                raise UserError(
                    f"{self.path}: was written with {key}={recorded.get(key)!r}, this run asks "
                    f"for {key}={value!r}; resume with the same settings or choose another --out"
                )

    def _load_existing(self) -> None:
        raw = self.path.read_bytes()
        complete = raw[: raw.rfind(b"\n") + 1]
        if len(complete) != len(raw):
            with open(self.path, "r+b") as f:
                f.truncate(len(complete))
                f.flush()
                os.fsync(f.fileno())
            self.repaired_torn_line = True
        try:
            lines = complete.decode("utf-8").split("\n")[:-1]
        except UnicodeDecodeError as e:
            number = complete[: e.start].count(b"\n") + 1
            raise UserError(f"{self.path}: line {number} is not UTF-8 text") from None
        if not lines:
            atomic_write_bytes(self.path, lambda f: f.write(self._line(self.columns)))
            return
        if tuple(lines[0].split("\t")) != self.columns:
            raise UserError(
                f"{self.path}: header is {lines[0]!r}, expected {chr(9).join(self.columns)!r}"
            )
        rows = []
        for number, line in enumerate(lines[1:], start=2):
            fields = line.split("\t")
            key = None
            if len(fields) == len(self.columns) and fields[0].isdigit():
                try:
                    key = self._key(dict(zip(self.columns, fields, strict=True)))
                except (ValueError, OverflowError):
                    pass
            if key is None:
                raise UserError(f"{self.path}: line {number} is malformed: {line[:80]!r}")
            rows.append(fields)
            self.done.add(key)
        self._check_rows(rows)

    def _check_rows(self, rows: list[list[str]]) -> None:
        """Refuse rows a certification, prediction or attack could not have written (their
        numbers as common.records.check_result_rows checks them), naming the first one."""
        numeric = [c for c in NUMERIC if c in self.columns]
        if not rows or not numeric:
            return
        frame = pd.DataFrame(rows, columns=list(self.columns), dtype=object)
        sigma = self.settings.get("sigma")
        check_result_rows(frame, self.path, range(2, len(rows) + 2), numeric=numeric,
                          keys=tuple(self.key_columns),
                          sigma=float(sigma) if finite(sigma) and sigma > 0 else None)

    def append(self, row: Mapping[str, Any]) -> None:
        """Write one complete row and make it durable before returning. A failed write (a full
        or read-only disk) names this file; a torn row it leaves is cut off on resume."""
        try:
            self._file.write(self._line([row[c] for c in self.columns]).decode())
            self._file.flush()
            os.fsync(self._file.fileno())
        except OSError as e:
            raise OSError(e.errno, e.strerror, str(self.path)) from e
        self.done.add(self._key({c: _format(row[c]) for c in self.key_columns}))

    def close(self) -> None:
        try:
            self._file.close()
        except OSError:
            pass  # the failed append already reported it; its rows up to then are on disk

    def __enter__(self) -> ResultsFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
