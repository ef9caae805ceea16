"""Sweep specs: trial-config defaults + resources + a grid, expanded into named trials.

A spec is a YAML mapping::

    name: cifar10_paper          # the sweep's folder name
    defaults: {...}              # trial-config keys (those of ``smoothadv train``)
    resources: {workers: 1, gpus_per_worker: 1, cpus_per_worker: 4, worker_retries: 2,
                trial_retries: 1, max_concurrent: 0, start_timeout_s: 3600}
    grid:                        # key → list of values (cartesian product), or a list of such
      sigma: [0.25, 0.5]         # mappings (their union, duplicates dropped)
    exclude: [{attack: ddn, m_train: 8}]   # drop trials matching every key of an entry
    attack_eval: {epsilons: [0.25, 0.5], steps: 20, m_test: 128, n: 1000, alpha: 0.001,
                  skip: 20, max: -1}       # optional empirical attack after certification
    stages: {n: 1000, skip: 100, radii: [], alpha: 0.001, final_skip: 1}
                                 # optional staged certification (sweep.stages)
    schedule: {rungs: [0.34, 0.67], images: 100, n0: 32, n: 500, alpha: 0.001,
               margin: 0.05, radii: [], min_trials: 3}
                                 # optional early stopping per σ envelope (sweep.early_stopping)

Every trial's config is validated before anything starts; errors are one line naming the key.
The blocks' dataclasses are sweep.spec_blocks', the grid's expansion and trial names
sweep.grid's; this module reads a spec (its keys, ``--set`` overrides, presets) into a
:class:`SweepSpec`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from smoothadv.common.errors import UserError, unknown_key
from smoothadv.common.yaml_input import load_yaml, read_yaml_file
from smoothadv.sweep.grid import Trial, expand_grid, parse_grid
from smoothadv.sweep.pretrained import KEY as INIT_FROM_SWEEP
from smoothadv.sweep.pretrained import pretrained_checkpoints, pretraining_spec
from smoothadv.sweep.spec_blocks import (
    AttackEval,
    EarlyStopping,
    Resources,
    StagedCertification,
    parse_spec_block,
)
from smoothadv.trainers.config import apply_overrides, parse_trial_config

SPEC_KEYS = ("name", "defaults", "resources", "grid", "exclude", "attack_eval",
             "init_from_sweep", "stages", "schedule", "max_trials")
# Trials a grid may hold unless the spec raises it (max_trials, `sweep run --max-trials`):
# the paper's largest grid (CIFAR-10, Tables 7-15) has a few hundred; counted before expanding.
MAX_TRIALS = 10_000


@dataclass(frozen=True)
class SweepSpec:
    name: str
    defaults: dict[str, Any]
    resources: Resources
    grid: list[dict[str, list[Any]]]
    exclude: list[dict[str, Any]] = field(default_factory=list)
    attack_eval: AttackEval | None = None
    init_from_sweep: str | None = None  # a pre-training sweep: init_from per (ε, σ)
    stages: StagedCertification | None = None  # None: every trial certified in full
    schedule: EarlyStopping | None = None  # early stopping per σ; None: every trial trains in full
    max_trials: int = MAX_TRIALS  # the grid's bound, checked before it is expanded

    def to_dict(self) -> dict[str, Any]:
        out = {"name": self.name, "defaults": self.defaults,
               "resources": asdict(self.resources), "grid": self.grid, "exclude": self.exclude}
        if self.attack_eval is not None:
            out["attack_eval"] = self.attack_eval.record()
        if self.init_from_sweep is not None:
            out["init_from_sweep"] = self.init_from_sweep
        if self.stages is not None:
            out["stages"] = self.stages.record()
        if self.schedule is not None:
            out["schedule"] = self.schedule.record()
        if self.max_trials != MAX_TRIALS:
            out["max_trials"] = self.max_trials
        return out

    def trials(self) -> list[Trial]:
        return expand(self)


def _max_trials(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"max_trials: expected an integer ≥ 1, got {value!r}")
    return value


# The optional blocks (absent: the feature is off) and the dataclass each is read into.
OPTIONAL_BLOCKS = {"attack_eval": AttackEval, "stages": StagedCertification,
                   "schedule": EarlyStopping}


def _optional_block(block: Any, overrides: list[str], name: str) -> Any:
    """An optional block after ``--set``: ``NAME.KEY=VALUE`` sets a key (the block begins with
    its defaults when absent), ``NAME=null`` (or false) drops the block, ``NAME=true`` adds it
    with its defaults."""
    for item in overrides:
        key, _, raw = item.partition("=")
        head, _, tail = key.partition(".")
        if head != name:
            continue
        value = load_yaml(raw, f"--set {key}")
        if tail:
            block = {**(block if isinstance(block, Mapping) else {}), tail: value}
        elif value is None or value is False:
            block = None
        elif value is True:
            block = block if isinstance(block, Mapping) else {}
        else:
            raise UserError(f"--set {name}: expected null or false (off), true (on, its "
                            f"defaults) or {name}.KEY=VALUE, got {raw!r}")
    return block


def _name(values: Any) -> str:
    """The spec's folder name, once the spec is a mapping of known keys with a grid."""
    if not isinstance(values, Mapping):
        raise UserError("spec: expected a mapping with keys name, defaults, resources, grid")
    for key in values:
        if key not in SPEC_KEYS:
            raise unknown_key(key, key, SPEC_KEYS)
    name = values.get("name")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise UserError(f"name: expected a folder-safe name (letters, digits, . _ -), got {name!r}")
    if "grid" not in values:
        raise UserError("grid: missing; give at least one key with a list of values")
    return name


def _mapping(values: Mapping[str, Any], key: str, holding: str) -> Mapping[str, Any]:
    block = values.get(key) or {}
    if not isinstance(block, Mapping):
        raise UserError(f"{key}: expected a mapping{holding}")
    return block


def _defaults(values: Mapping[str, Any], overrides: list[str],
              grid: list[dict[str, list[Any]]]) -> tuple[dict[str, Any], str | None]:
    """The trial defaults with their ``--set`` overrides (never of a gridded key), and the
    pre-training sweep they name, if any (``init_from_sweep``, in the defaults or the spec)."""
    defaults = _mapping(values, "defaults", " of trial-config keys")
    gridded = {k for part in grid for k in part}
    for item in overrides:
        key = item.partition("=")[0]
        if key in gridded:
            raise UserError(f"--set {key}: the key is gridded; edit the spec's grid instead")
    defaults = apply_overrides(defaults, overrides)
    init_from_sweep = defaults.pop(INIT_FROM_SWEEP, values.get(INIT_FROM_SWEEP))
    if init_from_sweep is not None and not isinstance(init_from_sweep, str):
        raise UserError(f"{INIT_FROM_SWEEP}: expected the folder of a pre-training sweep")
    if init_from_sweep is not None and ("init_from" in defaults or "init_from" in gridded):
        raise UserError(f"{INIT_FROM_SWEEP}: give either init_from or {INIT_FROM_SWEEP}")
    return defaults, init_from_sweep


def _exclude(values: Mapping[str, Any]) -> list[dict[str, Any]]:
    exclude = values.get("exclude") or []
    if not isinstance(exclude, list) or not all(isinstance(e, Mapping) for e in exclude):
        raise UserError("exclude: expected a list of mappings key → value (or list of values)")
    return [dict(e) for e in exclude]


def parse_spec(values: Any, overrides: Iterable[str] = ()) -> SweepSpec:
    """A validated spec; ``overrides`` are ``--set key=value`` on the defaults (or
    ``resources.key=value``, and for the optional blocks ``schedule.key=value`` or
    ``schedule=null``: :func:`_optional_block`); a gridded key cannot be overridden."""
    name = _name(values)
    max_trials = _max_trials(values.get("max_trials", MAX_TRIALS))
    grid = parse_grid(values["grid"], max_trials)
    overrides = list(overrides)
    optional = {block: _optional_block(values.get(block), overrides, block)
                for block in OPTIONAL_BLOCKS}
    defaults, init_from_sweep = _defaults(values, [
        o for o in overrides if not o.startswith("resources.")
        and o.partition("=")[0].partition(".")[0] not in OPTIONAL_BLOCKS], grid)
    resources = apply_overrides(_mapping(values, "resources", ""), [
        o.removeprefix("resources.") for o in overrides if o.startswith("resources.")])
    exclude = _exclude(values)
    spec = SweepSpec(
        name=name, defaults=defaults, grid=grid, exclude=exclude,
        resources=parse_spec_block(Resources, resources, "resources"),
        **{key: None if block is None else parse_spec_block(OPTIONAL_BLOCKS[key], block, key)
           for key, block in optional.items()},
        init_from_sweep=init_from_sweep, max_trials=max_trials)
    # Bad defaults are named even if every trial overrides them (init_from as it will resolve).
    placeholder = {} if init_from_sweep is None else {"init_from": init_from_sweep}
    parse_trial_config({**spec.defaults, **placeholder})
    if not expand(spec):
        raise UserError("grid: every trial is excluded; nothing to run")
    return spec


PRESETS = Path(__file__).resolve().parent / "presets"  # the paper's grids, shipped inside


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS.glob("*.yaml"))


def spec_path(name: str | Path) -> Path:
    """The spec file ``name`` names: a path, or a preset's name (``cifar10_paper``) when no
    such file exists here."""
    path = Path(name)
    preset = PRESETS / f"{name}.yaml"
    if not path.exists() and not path.suffix and path.name == str(name) and preset.is_file():
        return preset
    return path


def load_spec(path: str | Path, overrides: Iterable[str] = (),
              max_trials: int | None = None) -> SweepSpec:
    """Read a YAML spec file (or a preset by name; sizes and aliases limited, common.yaml_input)
    with ``--set`` overrides and ``--max-trials`` (None: the spec's own bound); errors are one
    line starting with the file name."""
    path = spec_path(path)
    if not path.exists() and not path.is_symlink():
        raise UserError(f"{path}: spec file does not exist (presets: "
                        f"{', '.join(preset_names())})")
    values = read_yaml_file(path)
    if max_trials is not None and isinstance(values, Mapping):
        values = {**values, "max_trials": max_trials}
    try:
        return parse_spec(values, overrides)
    except UserError as e:
        raise UserError(f"{path}: {e}") from None


def _pretraining_trials(sweep_dir: str) -> list[Trial]:
    """The trials of the pre-training sweep ``sweep_dir`` (its sweep.yaml expanded); a spec
    that does not parse is one line naming that file."""
    try:
        return parse_spec(pretraining_spec(sweep_dir)).trials()
    except UserError as e:
        raise UserError(f"{INIT_FROM_SWEEP}: {Path(sweep_dir) / 'sweep.yaml'}: {e}") from None


def expand(spec: SweepSpec) -> list[Trial]:
    """The spec's trials (sweep.grid.expand_grid), from the pre-training sweep's models when
    it names one."""
    pretrained = (None if spec.init_from_sweep is None else pretrained_checkpoints(
        spec.init_from_sweep, _pretraining_trials(spec.init_from_sweep)))
    return expand_grid(spec.grid, spec.exclude, spec.defaults, spec.init_from_sweep, pretrained)
