"""The paper's Figure 1/2 panels as separate headless figures (``Figure`` objects, no pyplot
state and no backend switched: a Jupyter user keeps inline plots).

Each builder returns a ``matplotlib.figure.Figure`` (tests inspect its lines); ``save`` writes
it as PNG and PDF. Radius on x (ℓ2, [0,1] pixel units), certified accuracy (fraction) on y.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib
import pandas as pd
from matplotlib.figure import Figure
from smoothadv.analysis.output import write_atomic
from smoothadv.analysis.paper_results import Row

SIZE = (6.4, 4.4)
X_LABEL = r"$\ell_2$ radius"
Y_LABEL = "certified accuracy"
_MARKERS = ("o", "s", "^", "D")


def _axes(title: str, largest: float) -> tuple[Figure, object]:
    fig = Figure(figsize=SIZE)
    fig.subplots_adjust(left=0.11, right=0.97, bottom=0.12, top=0.92)  # fixed: no layout pass
    ax = fig.add_subplot()
    ax.set(title=title, xlabel=X_LABEL, ylabel=Y_LABEL, ylim=(0, 1.02),
           xlim=(0, max(largest, 0.25) * 1.02))
    ax.grid(alpha=0.3)
    return fig, ax


def sigma_colors(sigmas: Sequence[float]) -> dict[float, tuple]:
    """One viridis colour per σ, low σ dark, high σ light (the same in every figure)."""
    cmap = matplotlib.colormaps["viridis"]
    ordered = sorted(set(sigmas))
    return {s: cmap(0.85 * i / max(len(ordered) - 1, 1)) for i, s in enumerate(ordered)}


def envelope_figure(main: pd.DataFrame, *, label: str, title: str,
                    plain_max: pd.DataFrame | None = None, published: Sequence[Row] = (),
                    empirical: pd.DataFrame | None = None) -> Figure:
    """Fig. 1 (left): the upper envelope (``radius``, ``accuracy``); with ``plain_max`` the
    max-over-trials envelope dashed beside a held-out one; published rows as points; the
    empirical-accuracy envelope (``epsilon``, ``accuracy``) when attack output exists."""
    largest = max([float(main["radius"].max()), *(max(r) for _, r, _ in published),
                   *([] if empirical is None else empirical["epsilon"].tolist())])
    fig, ax = _axes(title, largest)
    ax.plot(main["radius"], main["accuracy"], color="C0", lw=2, label=label)
    if plain_max is not None:
        ax.plot(plain_max["radius"], plain_max["accuracy"], color="C0", lw=1, ls="--",
                label="max over trials (biased upwards)")
    for k, (name, radii, accuracies) in enumerate(published):
        ax.plot(radii, accuracies, ls=":", lw=1, marker=_MARKERS[k % len(_MARKERS)],
                color=f"C{k + 2}", label=name)
    if empirical is not None and len(empirical):
        ax.plot(empirical["epsilon"], empirical["accuracy"], color="C1", marker="x", lw=1.2,
                label="empirical accuracy under attack (x: attack ε)")
    ax.legend(fontsize="small", loc="best")
    return fig


def per_sigma_figure(per_sigma: pd.DataFrame, *, title: str) -> Figure:
    """Fig. 1 (middle): one envelope per σ (``sigma``, ``radius``, ``accuracy``)."""
    fig, ax = _axes(title, float(per_sigma["radius"].max()))
    colors = sigma_colors(per_sigma["sigma"].tolist())
    for sigma, part in per_sigma.groupby("sigma", sort=True):
        ax.plot(part["radius"], part["accuracy"], color=colors[sigma], lw=1.8,
                label=f"σ = {sigma:g}")
    ax.legend(fontsize="small", loc="best")
    return fig


def representative_figure(curves: pd.DataFrame, sigma_of: Mapping[str, float], *,
                          title: str) -> Figure:
    """Fig. 1 (right): the certified-accuracy curve of each chosen trial (``curves``: index
    radius, one column per trial), coloured by its σ."""
    fig, ax = _axes(title, float(curves.index.max()))
    colors = sigma_colors(list(sigma_of.values()))
    for trial in curves.columns:
        sigma = sigma_of[trial]
        ax.plot(curves.index, curves[trial], color=colors[sigma], lw=1.8,
                label=f"σ = {sigma:g}: {trial}")
    ax.legend(fontsize="x-small" if len(curves.columns) > 4 else "small", loc="best")
    return fig


def all_trials_figure(curves: pd.DataFrame, main: pd.DataFrame, *, label: str,
                      title: str) -> Figure:
    """Every trial's curve faintly, the envelope on top."""
    fig, ax = _axes(title, float(curves.index.max()))
    radii = curves.index.to_numpy()
    for k, trial in enumerate(curves.columns):
        ax.plot(radii, curves[trial].to_numpy(), color="0.45", lw=0.8, alpha=0.35,
                label=f"each trial ({curves.shape[1]})" if k == 0 else None)
    ax.plot(main["radius"], main["accuracy"], color="C0", lw=2.2, label=label)
    ax.legend(fontsize="small", loc="upper right")
    return fig


def save(fig: Figure, folder: Path, stem: str) -> list[Path]:
    """Write ``stem.png`` (150 dpi) and ``stem.pdf`` into ``folder``, atomically."""
    paths = []
    for fmt in ("png", "pdf"):
        paths.append(write_atomic(folder / f"{stem}.{fmt}",
                                  lambda f, fmt=fmt: fig.savefig(f, format=fmt, dpi=150)))
    return paths

