"""A sweep spec's grid: its parts read and bounded (:func:`parse_grid`), expanded into named,
validated trials (:func:`expand_grid`), each named after its gridded values
(:func:`trial_name`: pgd-T10-m4-eps0.5-sigma0.25).
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from smoothadv.common.errors import UserError, unknown_key
from smoothadv.sweep.pretrained import pretrained_for
from smoothadv.trainers.config import TrialConfig, parse_trial_config

# Order and short forms of the paper's axes in trial names: pgd-T10-m4-eps0.5-sigma0.25.
_NAME_PARTS = {"method": "", "attack": "", "steps": "T", "m_train": "m", "epsilon": "eps",
               "sigma": "sigma"}
_TRIAL_KEYS = tuple(f.name for f in fields(TrialConfig))


@dataclass(frozen=True)
class Trial:
    """One point of the grid: its name, gridded values and full validated config."""

    name: str
    params: dict[str, Any]
    config: TrialConfig


def _axes(part: Any, where: str) -> dict[str, list[Any]]:
    """One grid part: trial-config key → its list of values (a single value: a list of one)."""
    if not isinstance(part, Mapping) or not part:
        raise UserError(f"{where}: expected a non-empty mapping of key → list of values")
    axes = {}
    for key, options in part.items():
        if not isinstance(key, str) or key == "certify":
            raise UserError(f"{where}.{key}: cannot be gridded")
        if key not in _TRIAL_KEYS:
            raise unknown_key(f"{where}.{key}", key, _TRIAL_KEYS)
        options = options if isinstance(options, list) else [options]
        if not options:
            raise UserError(f"{where}.{key}: empty list of values")
        axes[key] = options
    return axes


def parse_grid(values: Any, max_trials: int) -> list[dict[str, list[Any]]]:
    """The grid's parts (a mapping, or a list of them: their union), refused before any
    expansion when their cartesian products hold more than ``max_trials`` points together."""
    parts = values if isinstance(values, list) else [values]
    if not parts:
        raise UserError("grid: empty; give at least one key with a list of values")
    grid = [_axes(part, "grid" if not isinstance(values, list) else f"grid[{i}]")
            for i, part in enumerate(parts)]
    points = sum(math.prod(len(options) for options in part.values()) for part in grid)
    if points > max_trials:
        raise UserError(f"grid: {points:,} trials, more than max_trials = {max_trials:,}; "
                        "raise it with --max-trials N (or the spec's max_trials) if you mean it")
    return grid


def _value_text(value: Any) -> str:
    if isinstance(value, float):
        text = f"{value:g}"
    elif isinstance(value, str):
        text = Path(value).stem if "/" in value else value
    else:
        text = str(value)
    return re.sub(r"[^A-Za-z0-9.+_-]", "_", text)


def trial_name(params: Mapping[str, Any]) -> str:
    """A readable name from gridded values: the paper's axes first (pgd-T10-m4-eps0.5-sigma0.25),
    then any other key as key+value; ``method: smoothadv`` is implied by an attack name."""
    parts = []
    for key, short in _NAME_PARTS.items():
        if key in params and not (key == "method" and params[key] == "smoothadv"):
            parts.append(f"{short}{_value_text(params[key])}")
    parts += [f"{key}{_value_text(params[key])}" for key in sorted(params)
              if key not in _NAME_PARTS]
    return "-".join(parts) or "trial"


def _excluded(params: Mapping[str, Any], exclude: list[dict[str, Any]]) -> bool:
    def matches(key, wanted):
        options = wanted if isinstance(wanted, list) else [wanted]
        return key in params and params[key] in options

    return any(all(matches(k, v) for k, v in entry.items()) for entry in exclude)


def _points(grid: list[dict[str, list[Any]]], exclude: list[dict[str, Any]]):
    """The gridded values of each point: each part's cartesian product in turn, excluded
    points and repeats (a point of an earlier part) dropped."""
    seen: set[tuple] = set()
    for part in grid:
        keys = list(part)
        for combo in itertools.product(*(part[k] for k in keys)):
            params = dict(zip(keys, combo, strict=True))
            identity = tuple(sorted((k, repr(v)) for k, v in params.items()))
            if not _excluded(params, exclude) and identity not in seen:
                seen.add(identity)
                yield params


def _config(values: dict[str, Any], init_from_sweep: str | None,
            pretrained: dict[tuple[float, float], Path] | None) -> TrialConfig:
    """A point's validated config; with a pre-training sweep, ``init_from`` is its model for
    the point's (ε, σ) (validated as the sweep's folder, a path that exists)."""
    if pretrained is None:
        return parse_trial_config(values)
    config = parse_trial_config({**values, "init_from": init_from_sweep})
    path = pretrained_for(pretrained, init_from_sweep, config.epsilon, config.sigma)
    return replace(config, init_from=str(path))


def expand_grid(grid: list[dict[str, list[Any]]], exclude: list[dict[str, Any]],
                defaults: Mapping[str, Any], init_from_sweep: str | None = None,
                pretrained: dict[tuple[float, float], Path] | None = None) -> list[Trial]:
    """The union of each grid part's cartesian product, minus excluded points, each validated
    over ``defaults``; ``pretrained`` (sweep.pretrained.pretrained_checkpoints of the
    pre-training sweep ``init_from_sweep``) gives each trial its ``init_from``."""
    trials: dict[str, Trial] = {}
    for params in _points(grid, exclude):
        name = trial_name(params)
        try:
            config = _config({**defaults, **params}, init_from_sweep, pretrained)
        except UserError as e:
            raise UserError(f"trial {name}: {e}") from None
        if name in trials:
            raise UserError(f"grid: trials {params} and {trials[name].params} share the "
                            f"name {name!r}; make their gridded values distinct")
        trials[name] = Trial(name, params, config)
    return list(trials.values())
