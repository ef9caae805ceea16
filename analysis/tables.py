"""Report tables as Markdown and LaTeX (pandas Styler), best value per column in bold.

A ``Table`` holds a DataFrame whose columns are shown in order; ``percent`` columns hold
fractions shown as percentages with one decimal (as in the paper's tables), ``bold`` columns
have their largest value(s) in bold.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

_NAMES = {"sigma": "σ"}  # shown column names


@dataclass(frozen=True)
class Table:
    title: str
    frame: pd.DataFrame
    percent: Sequence[str] = ()
    bold: Sequence[str] = ()
    decimals: dict[str, int] = field(default_factory=dict)  # non-percent numbers: places
    note: str = ""


def _text(value: object, column: str, table: Table) -> str:
    if isinstance(value, str):
        return value
    if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value)):
        return "–"
    if column in table.percent:
        return f"{100 * float(value):.1f}"
    if column in table.decimals:
        return f"{float(value):.{table.decimals[column]}f}"
    if isinstance(value, float | np.floating):
        return f"{float(value):g}"
    return str(value)


def _best(table: Table, column: str) -> float | None:
    """The value to set in bold: the column's largest, unless all values are equal."""
    values = pd.to_numeric(table.frame[column], errors="coerce").dropna()
    return None if values.nunique() < 2 else float(values.max())


def header(column: object) -> str:
    """A column's shown name."""
    return _NAMES.get(str(column), str(column))


def cells(table: Table) -> list[list[tuple[str, bool]]]:
    """Each row's cells as shown: (text, whether it is the column's best, set in bold)."""
    best = {c: _best(table, c) for c in table.bold}
    rows = []
    for row in table.frame.itertuples(index=False):
        rows.append([(_text(value, column, table),
                      bool(best.get(column) is not None and not isinstance(value, str)
                           and value == best[column]))
                     for column, value in zip(table.frame.columns, row, strict=True)])
    return rows


def _markdown_table(table: Table) -> str:
    columns = table.frame.columns
    lines = ["| " + " | ".join(header(c) for c in columns) + " |",
             "|" + "|".join("---" for _ in columns) + "|"]
    for row in cells(table):
        shown = []
        for text, bold in row:
            text = text.replace("|", "\\|")
            shown.append(f"**{text}**" if bold else text)
        lines.append("| " + " | ".join(shown) + " |")
    return "\n".join(lines)


def markdown(title: str, preamble: Sequence[str], tables: Sequence[Table]) -> str:
    parts = [f"# {title}", "", *preamble]
    for table in tables:
        parts += ["", f"## {table.title}", ""]
        if table.note:
            parts += [table.note, ""]
        parts.append(_markdown_table(table) if len(table.frame) else "(none)")
    return "\n".join(parts) + "\n"


def _latex_table(table: Table) -> str:
    frame = table.frame.copy()
    frame.columns = [str(c) for c in frame.columns]
    styler = frame.style.hide(axis="index")
    styler = styler.format({c: (lambda v, c=c: _escape(_text(v, c, table)))
                            for c in frame.columns})
    styler = styler.format_index(lambda c: _escape(_NAMES.get(c, c)), axis=1)
    numeric = [c for c in table.bold if _best(table, c) is not None]
    if numeric:
        styler = styler.highlight_max(subset=numeric, props="textbf:--rwrap;")
    caption = table.title + (f". {table.note}" if table.note else "")
    return styler.to_latex(hrules=True, caption=_escape(caption), position_float="centering",
                           environment="table")


_LATEX_SPECIAL = str.maketrans({"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%",
                                "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
                                "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"})


_LATEX_SYMBOLS = str.maketrans({"σ": r"$\sigma$", "ℓ": r"$\ell$", "∞": r"$\infty$",
                                "ε": r"$\epsilon$", "ρ": r"$\rho$", "α": r"$\alpha$",
                                "≥": r"$\geq$", "·": r"$\cdot$", "√": r"$\surd$",
                                "−": "-", "–": "--", "×": r"$\times$"})


def _escape(text: str) -> str:
    """Text made safe for pdflatex: special characters escaped, Greek and maths symbols as
    maths."""
    text = text.translate(_LATEX_SPECIAL)
    text = text.replace("ℓ2", r"$\ell_2$").replace("ℓ∞", r"$\ell_\infty$")
    return text.translate(_LATEX_SYMBOLS)


def latex(title: str, preamble: Sequence[str], tables: Sequence[Table]) -> str:
    parts = [f"% {title}", *(f"% {line}" for line in preamble if line)]
    for table in tables:
        if len(table.frame):
            parts += ["", _latex_table(table).rstrip()]
    return "\n".join(parts) + "\n"
