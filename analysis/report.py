"""``smoothadv analyze``: gather every trial's certification, write the tidy table, the
certified-accuracy and envelope CSVs, the Figure 1/2 panels and the Table 1/2, per-σ, per-trial
(Tables 7–15) and ℓ∞ (Table 3) tables into one report folder, and index.html: all on one page.

Only trials with complete certification are drawn (gather.py says what counts as complete);
incomplete ones are listed with their "k/N images", or drawn, marked "(incomplete k/N)", with
``Options.include_incomplete``.

Everything is read and checked before the first file is written; each file is written
atomically, so a report folder never holds a half-written file.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from smoothadv.analysis import curves, figures, report_html
from smoothadv.analysis.gather import Gathered, gather
from smoothadv.analysis.output import write_atomic, write_text
from smoothadv.analysis.paper_results import (
    INPUT_DIM,
    LINF_RADII_255,
    PAPER_RADII,
    l2_radius_for_linf,
    published_rows,
)
from smoothadv.analysis.tables import Table, latex, markdown
from smoothadv.common.errors import UserError


@dataclass(frozen=True)
class Options:
    """``radii``: extra columns of certified_accuracy.csv; ``selection``: "max" (the paper's
    envelope) or "holdout"; ``references``: published rows to overlay (paper_results.py);
    ``representative``: trials for the right panel instead of the largest ACR per σ;
    ``rho``: failure probability of Cohen et al.'s high-probability bound;
    ``include_incomplete``: draw trials certified on fewer images than planned, marked."""

    radii: tuple[float, ...] = ()
    selection: str = "max"
    references: tuple[str, ...] = ()
    representative: tuple[str, ...] = ()
    rho: float = 0.001
    include_incomplete: bool = False


@dataclass(frozen=True)
class Report:
    folder: Path
    files: tuple[Path, ...]
    summary: tuple[str, ...]  # lines for the terminal
    figures: dict[str, Figure]  # stem → the figure written as stem.png and stem.pdf


def _check_options(options: Options, data: Gathered) -> None:
    for r in options.radii:
        if not math.isfinite(r) or r < 0:
            raise UserError(f"--radii: radii must be finite and ≥ 0, got {r}")
    if options.selection not in curves.SELECTIONS:
        raise UserError(f"--selection: expected one of {', '.join(curves.SELECTIONS)}, "
                        f"got {options.selection!r}")
    if not 0 < options.rho < 1:
        raise UserError(f"--rho: must lie in (0, 1), got {options.rho}")
    certified = set(data.certified["trial"])
    for name in options.representative:
        if name not in certified:
            raise UserError(f"--representative: no certified trial named {name!r}")


def _table_radii(dataset: str | None, largest: float) -> np.ndarray:
    """0 and the paper's radii for ``dataset`` (else every 0.25 up to the largest radius)."""
    paper = PAPER_RADII.get(dataset or "")
    return (np.asarray((0.0, *paper)) if paper
            else curves.radius_grid(largest, curves.TABLE_STEP))


def _label(selection: str, n: int) -> str:
    if selection == "holdout":
        return f"upper envelope, held-out selection ({n} trials)"
    return f"upper envelope: best of {n} trials per radius"


def build_report(sweeps: Sequence[str | Path], logs: str | Path | None, out: str | Path,
                 options: Options = Options()) -> Report:
    """Analyze ``sweeps`` and the ``logs`` mapping into the folder ``out``."""
    if not sweeps and logs is None:
        raise UserError("analyze: give at least one SWEEP_DIR or --logs MAPPING.csv")
    data = gather(sweeps, logs, include_incomplete=options.include_incomplete)
    _check_options(options, data)
    if data.certified.empty:
        raise UserError(_nothing_drawn(data))
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"-o {out}: exists and is not a folder")
    return _write(data, out, options)


def _nothing_drawn(data: Gathered) -> str:
    """Why no trial can be drawn, with the files of the first trial left out."""
    incomplete = len(data.incomplete)
    if incomplete:
        first = data.incomplete.iloc[0]
        return (f"no trial has finished certification yet ({incomplete} incomplete, "
                f"{len(data.missing) - incomplete} missing), e.g. {first['trial']}: "
                f"{first['status']} in {data.files.get(first['trial'], '?')}; "
                "--include-incomplete draws the incomplete ones")
    first = data.missing.iloc[0] if len(data.missing) else None
    where = ("" if first is None else f", e.g. {first['trial']}: {first['status']} "
             f"({data.files.get(first['trial'], '?')})")
    return (f"no trial has certification rows yet ({len(data.missing)} trials, all "
            f"missing){where}; nothing to analyze")


def _write(data: Gathered, out: Path, options: Options) -> Report:
    results, trials = data.results, data.certified
    cert = results[results["kind"] == "certify"]
    largest = float(cert["radius"].max())
    dataset = data.dataset
    column_radii = np.unique(np.concatenate(
        [curves.radius_grid(largest, curves.TABLE_STEP), np.round(options.radii, 10)]))
    fine = curves.radius_grid(largest + curves.CURVE_STEP, curves.CURVE_STEP)
    selection = options.selection
    files: list[Path] = []
    files.append(write_atomic(out / "results.parquet", lambda f: results.to_parquet(f)))

    summary = curves.trial_summary(results, column_radii)
    grid_cols = [c for c in data.grid if c in trials.columns]
    per_trial = (trials.set_index("trial")[grid_cols].join(summary)
                 .join(trials.set_index("trial")["complete"]).reset_index())
    files.append(_csv(out / "certified_accuracy.csv", per_trial))

    main = curves.envelope(results, fine, selection)
    plain = main if selection == "max" else curves.envelope(results, fine, "max")
    files.append(_csv(out / "envelope.csv", main[["radius", "accuracy", "trial"]]))
    per_sigma = curves.envelope_per_sigma(results, trials, fine, selection)
    files.append(_csv(out / "envelope_per_sigma.csv",
                      per_sigma[["sigma", "radius", "accuracy", "trial"]]))

    empirical = curves.empirical_accuracy(results)
    emp_env = curves.empirical_envelope(empirical) if len(empirical) else None
    if emp_env is not None:
        files.append(_csv(out / "empirical_accuracy.csv", empirical))

    published = published_rows(dataset, options.references)
    where = f" ({dataset})" if dataset else ""
    figs = _figures(data, fine, summary, main, plain, per_sigma, emp_env, published, where,
                    options)
    for stem, fig in figs.items():
        files += figures.save(fig, out, stem)

    headline_radii = _table_radii(dataset, largest)
    preamble, tables = _tables(data, results, headline_radii, summary, options, published,
                               emp_env)
    title = f"smoothadv analysis{where}"
    files.append(write_text(out / "tables.md", markdown(title, preamble, tables)))
    files.append(write_text(out / "tables.tex", latex(title, preamble, tables)))
    files.append(report_html.write(out, title, preamble, tables, figs, data, options, files))
    lines = _summary_lines(data, out, main, headline_radii, selection, options)
    return Report(out, tuple(files), tuple(lines), figs)


def _figures(data: Gathered, fine: np.ndarray, summary: pd.DataFrame, main: pd.DataFrame,
             plain: pd.DataFrame, per_sigma: pd.DataFrame, emp_env: pd.DataFrame | None,
             published: list, where: str, options: Options) -> dict[str, Figure]:
    """The four Figure 1/2 panels, by file stem."""
    trials = data.certified
    label = _label(options.selection, len(trials))
    all_curves = curves.trial_curves(data.results, fine)
    sigma_of = dict(zip(trials["trial"], trials["sigma"], strict=True))
    chosen = (list(options.representative) if options.representative
              else curves.representatives(summary, trials)["trial"].tolist())
    how = "" if options.representative else ": largest ACR per σ"
    return {
        "envelope": figures.envelope_figure(
            main, label=label, title=f"Certified accuracy, upper envelope{where}",
            plain_max=None if options.selection == "max" else plain, published=published,
            empirical=emp_env),
        "envelope_per_sigma": figures.per_sigma_figure(
            per_sigma, title=f"Upper envelope per noise level σ{where}"),
        "representative_per_sigma": figures.representative_figure(
            all_curves[chosen], sigma_of, title=f"Representative trials{where}{how}"),
        "certified_accuracy_all": figures.all_trials_figure(
            all_curves, main, label=label, title=f"Every trial and the upper envelope{where}"),
    }


def _csv(path: Path, frame: pd.DataFrame) -> Path:
    return write_atomic(path, lambda f: frame.to_csv(f, index=False))


def _radius_header(r: float) -> str:
    return f"{r:g}"


def _envelope_rows(results: pd.DataFrame, radii: np.ndarray, alpha: pd.Series,
                   rho: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Plain max and held-out envelope at ``radii``, each with Cohen's bound."""
    out = {}
    for selection in curves.SELECTIONS:
        env = curves.envelope(results, radii, selection)
        env["bound"] = curves.cohen_lower_bound(env["accuracy"], env["images"],
                                                alpha.reindex(env["trial"]).to_numpy(), rho)
        out[selection] = env
    return out["max"], out["holdout"]


def _tables(data: Gathered, results: pd.DataFrame, radii: np.ndarray, summary: pd.DataFrame,
            options: Options, published, emp_env: pd.DataFrame | None
            ) -> tuple[list[str], list[Table]]:
    trials = data.certified
    alpha = trials.set_index("trial")["alpha"]
    heads = [_radius_header(r) for r in radii]
    plain, held = _envelope_rows(results, radii, alpha, options.rho)
    rho = f"{options.rho:g}"
    rows = [("upper envelope (max over trials)", plain["accuracy"]),
            (f"max: Cohen's bound, ρ = {rho} (no guarantee for a max)", plain["bound"]),
            ("held-out selection (chosen on half A, measured on half B)", held["accuracy"]),
            (f"held-out: Cohen's bound, ρ = {rho} (holds w.p. ≥ 1−ρ)", held["bound"])]
    for name, pub_radii, accuracies in published:
        lookup = dict(zip(pub_radii, accuracies, strict=True))
        rows.append((name, pd.Series([lookup.get(r, np.nan) for r in radii])))
    headline = pd.DataFrame([[name, *np.asarray(values, dtype=float)] for name, values in rows],
                            columns=["", *heads])
    best_trials = pd.DataFrame({"radius": radii, "max": plain["trial"],
                                "chosen on (max)": plain["chosen_on"],
                                "images (max)": plain["images"],
                                "common only (max)": _marks(plain), "held-out": held["trial"],
                                "chosen on (held-out)": held["chosen_on"],
                                "images (held-out)": held["images"],
                                "common only (held-out)": _marks(held)})

    per_sigma = curves.envelope_per_sigma(results, trials, radii, options.selection)
    sigma_table = per_sigma.pivot(index="sigma", columns="radius", values="accuracy")
    sigma_table.columns = [_radius_header(r) for r in sigma_table.columns]
    sigma_table = sigma_table.reset_index()

    every = _every_trial_table(data, results, radii, summary)
    tables = [
        Table("Certified accuracy (%) of the best trial at each ℓ2 radius (Tables 1–2)",
              headline, percent=heads,
              note=("Max: the paper's envelope, biased upwards (a max of noisy estimates). "
                    "Held-out: trial chosen per radius on a seeded half of the image indices, "
                    "accuracy measured on the other half. Cohen's bound: acc − α − "
                    "√(α(1−α)ln(1/ρ)/m) − ln(1/ρ)/(3m), clipped at 0; it holds for a trial "
                    "fixed in advance, so only the held-out row's bound is a guarantee.")),
        Table("Trial behind each envelope point", best_trials, decimals={"radius": 2},
              note=" ".join(filter(None, [CHOSEN_NOTE, _flagged(plain, "max"),
                                          _flagged(held, "held-out")]))),
        Table(f"Upper envelope per σ (%), selection: {options.selection}", sigma_table,
              percent=heads, bold=heads,
              note=_flagged(per_sigma, "per σ")),
        Table("Every trial (Tables 7–15), certified accuracy (%)", every,
              percent=heads, bold=[*heads, "ACR"], decimals={"ACR": 3}),
    ]
    linf = _linf_table(results, data.dataset, alpha, options.rho)
    if linf is not None:
        tables.append(linf)
    if emp_env is not None:
        tables.append(Table("Empirical accuracy under attack (%), best trial per attack ε",
                            emp_env.rename(columns={"epsilon": "ε"}), percent=["accuracy"]))
    missing = data.missing[["trial", "status"]].rename(columns={"status": "why"})
    tables.append(Table("Trials left out: missing or incomplete certification", missing))
    return _preamble(data, options), tables


CHOSEN_NOTE = ("Each trial is chosen on the images common to all trials (chosen on: how many; "
               "held-out: those of half A; 0: none is common, each trial judged on its own "
               "rows) and its accuracy reported on all of its own rows (images; held-out: those "
               "of half B), as Salman et al. 2019 chose on 500 images and reported on 10,000: a "
               "staged sweep's winners on the full test set, never a max over a mix of "
               "full-test and subset rows. Common only: the trial has no rows beyond the common "
               "images while others have (stage 3 not run or not finished for it), so its "
               "accuracy is on the common images.")


def _marks(env: pd.DataFrame) -> list[str]:
    """"yes" where an envelope point is reported on the common images only, else ""."""
    return ["yes" if flag else "" for flag in env["common_only"]]


def _flagged(env: pd.DataFrame, what: str, shown: int = 5) -> str:
    """A sentence naming the envelope points reported on the common images only ("": none)."""
    points = env[env["common_only"]]
    if points.empty:
        return ""
    named = [(f"σ = {p.sigma:g}, " if "sigma" in env else "") + f"r = {p.radius:g} ({p.trial})"
             for p in points.head(shown).itertuples()]
    more = f" and {len(points) - shown} more" if len(points) > shown else ""
    return (f"{what}: {len(points)} point(s) reported on the common images only, their trial "
            f"lacking full-test rows: {'; '.join(named)}{more}.")


def _every_trial_table(data: Gathered, results: pd.DataFrame, radii: np.ndarray,
                       summary: pd.DataFrame) -> pd.DataFrame:
    trials = data.certified
    grid = [c for c in data.grid if trials[c].notna().any()]
    at = curves.trial_summary(results, radii)
    acc = at[[f"acc@{r:g}" for r in radii]]
    acc.columns = [_radius_header(r) for r in radii]
    table = (trials.set_index("trial")[grid].join(acc)
             .join(summary[["acr", "images"]].rename(columns={"acr": "ACR"})))
    order = ["sigma", *(c for c in grid if c != "sigma"), "trial"]
    return table.reset_index().sort_values(order, na_position="last", kind="stable")


def _linf_table(results: pd.DataFrame, dataset: str | None, alpha: pd.Series,
                rho: float) -> Table | None:
    if dataset not in INPUT_DIM:
        return None
    linf = np.asarray(LINF_RADII_255) / 255
    l2 = np.round([l2_radius_for_linf(r, dataset) for r in linf], 10)
    plain, held = _envelope_rows(results, l2, alpha, rho)
    frame = pd.DataFrame({"ℓ∞ radius": [f"{k:g}/255" for k in LINF_RADII_255],
                          "ℓ2 radius": l2, "max": plain["accuracy"], "trial (max)": plain["trial"],
                          "held-out": held["accuracy"], "held-out bound": held["bound"]})
    return Table(f"ℓ∞ certified accuracy (%) implied by the ℓ2 certificates (Table 3): an ℓ2 "
                 f"radius r covers ℓ∞ radius r/√d, d = {INPUT_DIM[dataset]} for {dataset}",
                 frame, percent=["max", "held-out", "held-out bound"],
                 decimals={"ℓ2 radius": 3})


def _preamble(data: Gathered, options: Options) -> list[str]:
    trials = data.certified
    images = trials["images"]
    counts = (f"{images.iloc[0]} images per trial" if images.nunique() == 1
              else f"images per trial differ: {images.min()}–{images.max()} (each trial's "
                   "accuracy is over its own images)")
    lines = [f"{_trial_counts(data)}; {counts}; envelope selection: {options.selection}; "
             f"ρ = {options.rho:g}."]
    lines += _image_set_lines(data)
    if data.target_radius is not None:
        lines.append(f"Certified sequentially up to radius {data.target_radius:g}: accuracies at "
                     "larger radii are lower bounds (sampling stopped once an image reached it).")
    if data.torn:
        lines.append(f"Ignored a torn last line (a writer stopped mid-line) in {len(data.torn)} "
                     f"file(s): {', '.join(data.torn)}.")
    if options.references and not published_rows(data.dataset, options.references):
        lines.append(f"--reference: no published rows for dataset {data.dataset or 'unknown'} "
                     f"(published: {', '.join(PAPER_RADII)}); none drawn.")
    return lines


def _image_set_lines(data: Gathered) -> list[str]:
    """How the envelopes choose when trials were certified on different images, and which
    trials of a staged sweep are still in stage 3."""
    cert = data.results[data.results["kind"] == "certify"]
    common = curves.common_images(cert)
    lines = []
    if len(common) < cert["idx"].nunique():
        how = ("each envelope point's trial is chosen on the images common to the trials "
               "compared and reported on all of its own rows (Salman et al. 2019: chosen on 500 "
               "images, reported on 10,000)" if len(common)
               else "no image is common to all, so each trial is judged on its own rows")
        lines.append(f"Trials certified on different images ({len(common)} common to all): "
                     f"{how}.")
    if data.unfinished:
        lines.append(f"Staged certification: stage 3 has not finished for "
                     f"{len(data.unfinished)} trial(s) ({', '.join(data.unfinished[:5])}"
                     f"{', …' if len(data.unfinished) > 5 else ''}): drawn on stage 2's images.")
    return lines


def _trial_counts(data: Gathered) -> str:
    """How many trials are drawn, missing and incomplete."""
    drawn_incomplete = int((~data.certified["complete"]).sum())
    left_incomplete = len(data.incomplete) - drawn_incomplete
    text = f"{len(data.certified)} trials certified"
    if drawn_incomplete:
        text += (f" ({drawn_incomplete} of them incomplete, drawn by --include-incomplete and "
                 "marked)")
    text += f", {len(data.missing) - left_incomplete} missing"
    if left_incomplete:
        text += f", {left_incomplete} incomplete (left out)"
    return text


def _summary_lines(data: Gathered, out: Path, main: pd.DataFrame, radii: np.ndarray,
                   selection: str, options: Options) -> list[str]:
    lines = [f"report written to {out}/"]
    lines += _preamble(data, options)
    left = data.missing
    if len(left):
        lines.append(f"left out ({len(left)}):")
        lines += [f"  {trial}: {status}" for trial, status in
                  zip(left["trial"][:10], left["status"][:10], strict=True)]
        lines += [f"  … and {len(left) - 10} more (see tables.md)"] if len(left) > 10 else []
    shown = [r for r in radii if r > 0][:4] or [0.0]
    points = main.set_index(np.round(main["radius"], 10))
    best = ", ".join(f"r={r:g}: {points.at[round(r, 10), 'accuracy']:.3f} "
                     f"({points.at[round(r, 10), 'trial']}"
                     f"{', common images only' if points.at[round(r, 10), 'common_only'] else ''})"
                     for r in shown if round(r, 10) in points.index)
    lines.append(f"envelope ({selection}): {best}")
    return lines
