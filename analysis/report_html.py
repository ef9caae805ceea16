"""``index.html``: the whole report on one self-contained page, for a browser or an e-mail.

How the report was made (what was read, the selection rule, ρ, the options, the date and
smoothadv's version), the figures (the PNG files written beside it, embedded as ``data:`` URIs)
and every table (the same cells as tables.md), with small inline CSS: no script, no external
style sheet, font or image, so the page can be attached on its own.

Every string that comes from files (trial names, folders, statuses, gridded values) is
HTML-escaped: a trial named ``<script>`` is shown as text, never run.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from html import escape
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure
from smoothadv.analysis.output import write_text
from smoothadv.analysis.tables import Table, cells, header
from smoothadv.common.provenance import version

PAGE = "index.html"

# Captions of the report's figures, by file stem (another stem is captioned by its title).
CAPTIONS = {
    "envelope": "Fig. 1 (left): the upper envelope of certified accuracy over all trials",
    "envelope_per_sigma": "Fig. 1 (middle): the upper envelope per noise level σ",
    "representative_per_sigma": "Fig. 1 (right): representative trials, one curve per trial",
    "certified_accuracy_all": "Every trial's curve (grey) under the upper envelope",
}

SELECTIONS = {
    "max": "max: at each radius the best trial (the paper's envelope; biased upwards, a max "
           "of noisy estimates)",
    "holdout": "holdout: at each radius the trial chosen on a seeded half of the images, its "
               "accuracy measured on the other half",
}

CSS = """
body{margin:0;color:#1d1d1f;background:#fff;
 font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif}
main{max-width:1240px;margin:0 auto;padding:20px 28px 48px}
h1{font-size:1.6em;margin:.3em 0 .5em}
h2{font-size:1.2em;margin:1.8em 0 .5em;padding-bottom:.2em;border-bottom:1px solid #ddd}
dl.made{display:grid;grid-template-columns:max-content 1fr;gap:.25em 1.2em;margin:0}
dl.made dt{font-weight:600}dl.made dd{margin:0}
code{font:.9em ui-monospace,"DejaVu Sans Mono",monospace;background:#f3f3f3;padding:0 .25em;
 overflow-wrap:anywhere}
ul.notes{margin:.6em 0;padding-left:1.2em}nav ol{columns:2;margin:.3em 0}
.figs{display:grid;grid-template-columns:repeat(auto-fill,minmax(540px,1fr));gap:18px}
figure{margin:0}figure img{display:block;width:100%;height:auto;border:1px solid #e5e5e5}
figcaption{font-size:.9em;color:#555;margin-top:.3em}
.note{font-size:.9em;color:#444;max-width:75em}
.scroll{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;font-size:.85em;font-variant-numeric:tabular-nums}
th,td{border:1px solid #d9d9d9;padding:3px 8px;vertical-align:top;white-space:nowrap}
th{background:#f2f4f7;text-align:center}td.num{text-align:right}
tbody tr:nth-child(even){background:#fafafa}td b{color:#000}p.none{color:#666;font-style:italic}
"""


def write(out: Path, title: str, preamble: Sequence[str], tables: Sequence[Table],
          figs: Mapping[str, Figure], data: Any, options: Any, files: Sequence[Path]) -> Path:
    """Write ``out/index.html`` atomically; ``data``: the gathered trials (analysis.gather),
    ``options``: the report's Options, ``files``: those written beside it."""
    names = [Path(f).name for f in files]
    images = figures_of(out, figs, names)
    return write_text(out / PAGE, page(title, made_by(data, options, names), preamble, images,
                                       tables))


def page(title: str, made: Sequence[tuple[str, str]], preamble: Sequence[str],
         images: Sequence[tuple[str, str, bytes]], tables: Sequence[Table]) -> str:
    """The page: ``made``: (what, how) rows, already HTML; ``images``: (stem, alt, PNG bytes)."""
    contents = "".join(f'<li><a href="#table-{k}">{escape(t.title)}</a></li>'
                       for k, t in enumerate(tables, start=1))
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             f"<title>{escape(title)}</title><style>{CSS}</style></head><body><main>",
             f"<h1>{escape(title)}</h1>", '<section id="made"><h2>How this report was made</h2>',
             '<dl class="made">', *(f"<dt>{what}</dt><dd>{how}</dd>" for what, how in made),
             "</dl>", _list(preamble), "</section>",
             '<nav><h2>Contents</h2><ol><li><a href="#figures">Figures</a></li>',
             f"{contents}</ol></nav>",
             '<section id="figures"><h2>Figures</h2><div class="figs">',
             *(_figure(stem, alt, png) for stem, alt, png in images), "</div>",
             "" if images else '<p class="none">(no figure written)</p>', "</section>"]
    for k, table in enumerate(tables, start=1):
        parts.append(_table_section(k, table))
    parts.append("</main></body></html>")
    return "\n".join(parts) + "\n"


def made_by(data: Any, options: Any, files: Sequence[str]) -> list[tuple[str, str]]:
    """How the report was made, as (what, how) rows of HTML (every value escaped)."""
    sources = list(dict.fromkeys(str(s) for s in data.trials["source"]))
    counts = (f"{len(data.certified)} certified, {len(data.missing)} left out "
              f"({len(data.trials)} in all)")
    radii = ", ".join(f"{r:g}" for r in options.radii)
    return [
        ("Read", "<br>".join(f"<code>{escape(s)}</code>" for s in sources)
         or "(nothing)"),
        ("Trials", escape(counts)),
        ("Dataset", escape(data.dataset or "unknown")),
        ("Envelope selection", escape(SELECTIONS.get(options.selection, options.selection))),
        ("ρ", escape(f"{options.rho:g}: failure probability of Cohen et al.'s "
                     "high-probability bound on certified accuracy")),
        ("Representative trials", escape(", ".join(options.representative)
                                         or "the largest ACR per σ")),
        ("Published rows drawn", escape(", ".join(options.references) or "none")),
        ("Extra radii", escape(radii or "none") + " (columns of certified_accuracy.csv)"),
        ("Incomplete trials", "drawn, marked “(incomplete k/N)”" if options.include_incomplete
         else "left out (listed in the last table)"),
        ("Made", escape(datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
                        + f" by smoothadv {version()}")),
        ("Beside this page", ", ".join(f"<code>{escape(f)}</code>" for f in files)
         or "(nothing)"),
    ]


def figures_of(out: Path, figs: Mapping[str, Figure], files: Sequence[str]
               ) -> list[tuple[str, str, bytes]]:
    """(stem, alt text, PNG bytes) of each figure whose ``stem.png`` is among ``files`` (those
    written beside the page: the very bytes of that file)."""
    return [(stem, fig.axes[0].get_title() if fig.axes else stem,
             (out / f"{stem}.png").read_bytes())
            for stem, fig in figs.items() if f"{stem}.png" in files]


def _figure(stem: str, alt: str, png: bytes) -> str:
    data = base64.b64encode(png).decode("ascii")
    caption = CAPTIONS.get(stem, alt)
    return (f'<figure id="fig-{escape(stem)}"><img src="data:image/png;base64,{data}" '
            f'alt="{escape(alt)}"><figcaption>{escape(caption)} '
            f"(<code>{escape(stem)}.png</code>, <code>{escape(stem)}.pdf</code>)</figcaption>"
            "</figure>")


def _list(lines: Sequence[str]) -> str:
    shown = [line for line in lines if line]
    return ('<ul class="notes">' + "".join(f"<li>{escape(line)}</li>" for line in shown)
            + "</ul>") if shown else ""


def _table_section(k: int, table: Table) -> str:
    note = f'<p class="note">{escape(table.note)}</p>' if table.note else ""
    body = html_table(table) if len(table.frame) else '<p class="none">(none)</p>'
    return (f'<section id="table-{k}"><h2>{escape(table.title)}</h2>{note}'
            f'<div class="scroll">{body}</div></section>')


def html_table(table: Table) -> str:
    """``table`` as an HTML table: the cells of tables.md, escaped, the best in bold, numbers
    right-aligned."""
    frame = table.frame
    numeric = [pd.api.types.is_numeric_dtype(dtype) or c in table.percent
               for c, dtype in zip(frame.columns, frame.dtypes, strict=True)]
    head = "".join(f"<th>{escape(header(c))}</th>" for c in frame.columns)
    rows = []
    for row in cells(table):
        tds = []
        for (text, bold), num in zip(row, numeric, strict=True):
            shown = f"<b>{escape(text)}</b>" if bold else escape(text)
            tds.append(f'<td class="num">{shown}</td>' if num else f"<td>{shown}</td>")
        rows.append("<tr>" + "".join(tds) + "</tr>")
    return (f"<table><thead><tr>{head}</tr></thead><tbody>" + "\n".join(rows)
            + "</tbody></table>")
