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
                                 # optional early stopping per σ envelope (sweep.scheduler)

Every trial's config is validated before anything starts; errors are one line naming the key.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Self

from smoothadv.common.errors import UserError, unknown_key
from smoothadv.common.settings import AttackKeys
from smoothadv.common.yaml_input import load_yaml, read_yaml_file
from smoothadv.sweep.pretrained import KEY as INIT_FROM_SWEEP
from smoothadv.sweep.pretrained import pretrained_checkpoints, pretrained_for, pretraining_spec
from smoothadv.trainers.config import TrialConfig, apply_overrides, parse_trial_config

SPEC_KEYS = ("name", "defaults", "resources", "grid", "exclude", "attack_eval",
             "init_from_sweep", "stages", "schedule", "max_trials")
# Trials a grid may hold unless the spec raises it (max_trials, `sweep run --max-trials`):
# the paper's largest grid (CIFAR-10, Tables 7-15) has a few hundred; counted before expanding.
MAX_TRIALS = 10_000
# Order and short forms of the paper's axes in trial names: pgd-T10-m4-eps0.5-sigma0.25.
_NAME_PARTS = {"method": "", "attack": "", "steps": "T", "m_train": "m", "epsilon": "eps",
               "sigma": "sigma"}


@dataclass(frozen=True)
class Resources:
    """What one trial asks Ray for: Train workers (DDP ranks) and each worker's share."""

    workers: int = 1
    gpus_per_worker: float = 0.0  # fractions let several small trials share one GPU
    cpus_per_worker: float = 1.0
    worker_retries: int = 2  # worker-group failures retried inside the trial (Train)
    trial_retries: int = 0  # trial errors retried by Tune
    max_concurrent: int = 0  # trials at once; 0: as many as the cluster holds when it starts
    start_timeout_s: float = 3600.0  # how long a trial's workers may wait for their resources
    upload_every_s: float = 120.0  # bucket storage: seconds between a trial's uploads

    def trials_that_fit(self, cpus: float, gpus: float) -> int:
        """How many trials ``cpus`` CPUs and ``gpus`` GPUs hold at once (maybe 0)."""
        fits = [cpus / (self.workers * self.cpus_per_worker)]
        if self.gpus_per_worker:
            fits.append(gpus / (self.workers * self.gpus_per_worker))
        return math.floor(min(fits) + 1e-9)

    def validate(self) -> Resources:
        if self.workers < 1:
            raise UserError(f"resources.workers: must be ≥ 1, got {self.workers}")
        if self.gpus_per_worker < 0 or (self.gpus_per_worker > 1
                                        and self.gpus_per_worker != int(self.gpus_per_worker)):
            raise UserError("resources.gpus_per_worker: must be a fraction in [0, 1] or a whole "
                            f"number, got {self.gpus_per_worker}")
        if self.cpus_per_worker < 0.1:
            raise UserError("resources.cpus_per_worker: must be ≥ 0.1, got "
                            f"{self.cpus_per_worker}")
        for key in ("worker_retries", "trial_retries", "max_concurrent"):
            if getattr(self, key) < 0:
                raise UserError(f"resources.{key}: must be ≥ 0, got {getattr(self, key)}")
        if self.start_timeout_s <= 0:
            raise UserError(f"resources.start_timeout_s: must be > 0, got {self.start_timeout_s}")
        if self.upload_every_s <= 0:
            raise UserError(f"resources.upload_every_s: must be > 0, got {self.upload_every_s}")
        return self


@dataclass(frozen=True, kw_only=True)
class AttackEval(AttackKeys):
    """The empirical attack run on each trial's final model (paper Section 4.3), on every
    ``skip``-th test image before index ``max``; ``sigma`` and ``seed`` are the trial's."""

    epsilons: tuple[float, ...] = (0.25, 0.5, 1.0)
    n: int = 1000
    skip: int = 1
    max: int = -1

    def validate(self, prefix: str = "attack_eval.") -> Self:
        super().validate(prefix)
        if self.skip < 1:
            raise UserError(f"{prefix}skip: must be ≥ 1, got {self.skip}")
        return self


@dataclass(frozen=True)
class Stages:
    """Staged certification (sweep.stages; issue 15): stage 1 certifies every trial on every
    ``skip``-th test image with ``n`` samples; stage 2 certifies at the trials' full ``certify``
    settings only those whose certified accuracy can still reach the envelope at some radius
    of ``radii`` (empty: every 0.25 up to the largest radius the trials' full n certifies, or
    their ``certify.target_radius``), with risk ``alpha`` per bound; stage 3 re-certifies the
    envelope's winners on every ``final_skip``-th image (1: the whole test set)."""

    n: int = 1000
    skip: int = 100
    radii: tuple[float, ...] = ()
    alpha: float = 0.001
    final_skip: int = 1

    def validate(self, prefix: str = "stages.") -> Stages:
        for key in ("n", "skip", "final_skip"):
            if getattr(self, key) < 1:
                raise UserError(f"{prefix}{key}: must be ≥ 1, got {getattr(self, key)}")
        if not 0 < self.alpha < 0.5:
            raise UserError(f"{prefix}alpha: must lie in (0, 0.5), got {self.alpha}")
        if any(r < 0 for r in self.radii):
            raise UserError(f"{prefix}radii: must be ≥ 0, got {list(self.radii)}")
        return self

    def record(self) -> dict[str, Any]:
        return {**asdict(self), "radii": list(self.radii)}


@dataclass(frozen=True)
class Schedule:
    """Early stopping (sweep.scheduler; issue 15 part 3): after each rung epoch (a fraction of
    ``rungs`` of the trial's epochs) a trial certifies its current model on a proxy of about
    ``images`` test images (every k-th, k = max(1, test images // images)) with ``n0``/``n``
    samples at risk ``alpha``, and reports its certified accuracy at ``radii`` (empty: every
    0.25 up to what ``n`` certifies at its σ, or the trials' ``certify.target_radius`` when
    smaller); it is stopped when, once ``min_trials`` trials of its σ reported the rung, the
    others' envelope beats it by more than ``margin`` at every radius.

    The defaults (``images`` 500, ``margin`` 0.1) are chosen by benchmarks/early_stop_replay.py
    on a real 440-trial CIFAR-10 grid: 1.32× of the training cost saved, and the envelope at
    r = 0 … 2.25 never more than 1 point lower in 200 draws when each trial's rung model is
    mildly worse than its final one, where 100 images and margin 0.05 lost more than 1 point in
    61 % of draws (README, "Early stopping at the paper's scale")."""

    rungs: tuple[float, ...] = (0.34, 0.67)
    images: int = 500
    n0: int = 32
    n: int = 500
    alpha: float = 0.001
    margin: float = 0.1
    radii: tuple[float, ...] = ()
    min_trials: int = 3

    def validate(self, prefix: str = "schedule.") -> Schedule:
        if not self.rungs:
            raise UserError(f"{prefix}rungs: give at least one fraction of the epochs")
        if not all(0 < f < 1 for f in self.rungs):
            raise UserError(f"{prefix}rungs: each must lie in (0, 1), got {list(self.rungs)}")
        for key in ("images", "n0", "n"):
            if getattr(self, key) < 1:
                raise UserError(f"{prefix}{key}: must be ≥ 1, got {getattr(self, key)}")
        if not 0 < self.alpha < 0.5:
            raise UserError(f"{prefix}alpha: must lie in (0, 0.5), got {self.alpha}")
        if not 0 <= self.margin < 1:
            raise UserError(f"{prefix}margin: must be ≥ 0 and < 1, got {self.margin}")
        if any(r < 0 for r in self.radii):
            raise UserError(f"{prefix}radii: must be ≥ 0, got {list(self.radii)}")
        if self.min_trials < 2:
            raise UserError(f"{prefix}min_trials: must be ≥ 2 (a trial is judged against "
                            f"others of its σ), got {self.min_trials}")
        return self

    def record(self) -> dict[str, Any]:
        return {**asdict(self), "rungs": list(self.rungs), "radii": list(self.radii)}

    def rung_epochs(self, epochs: int) -> dict[int, int]:
        """Epochs trained after which a proxy is certified → their rung (1, 2, …): each
        max(1, round(f·epochs)) (halves up), duplicates and the last epoch dropped."""
        ends = sorted({max(1, math.floor(f * epochs + 0.5)) for f in self.rungs} - {epochs})
        return {e: i + 1 for i, e in enumerate(e for e in ends if e < epochs)}

    def proxy_skip(self, num_images: int) -> int:
        """Every k-th test image makes the proxy: about ``images`` of ``num_images``."""
        return max(1, num_images // self.images)

    def radii_for(self, sigma: float, target_radius: float | None = None) -> list[float]:
        """Where a trial of noise level ``sigma`` reports its proxy: ``radii``, else
        common.stages.default_radii at the proxy's n (radii no proxy certifies would keep
        every trial)."""
        if self.radii:
            return sorted(self.radii)
        from smoothadv.common.stages import (
            default_radii,  # scipy: off the sweep driver's import path
        )

        return default_radii(sigma, self.n, self.alpha, target_radius)


@dataclass(frozen=True)
class Trial:
    """One point of the grid: its name, gridded values and full validated config."""

    name: str
    params: dict[str, Any]
    config: TrialConfig


@dataclass(frozen=True)
class SweepSpec:
    name: str
    defaults: dict[str, Any]
    resources: Resources
    grid: list[dict[str, list[Any]]]
    exclude: list[dict[str, Any]] = field(default_factory=list)
    attack_eval: AttackEval | None = None
    init_from_sweep: str | None = None  # a pre-training sweep: init_from per (ε, σ)
    stages: Stages | None = None  # staged certification; None: every trial certified in full
    schedule: Schedule | None = None  # early stopping per σ; None: every trial trains in full
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


def _number(key: str, value: Any, kind: type) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float) or (
            kind is int and not isinstance(value, int)) or not math.isfinite(value):
        raise UserError(f"{key}: expected {'an integer' if kind is int else 'a number'}, "
                        f"got {value!r}")
    return kind(value)


def _block(cls, values: Any, key: str):
    if not isinstance(values, Mapping):
        raise UserError(f"{key}: expected a mapping")
    known = {f.name: f for f in fields(cls)}
    typed = {}
    for k, v in values.items():
        if k not in known:
            raise unknown_key(f"{key}.{k}", k, known)
        if k in ("epsilons", "radii", "rungs"):
            if not isinstance(v, list):
                raise UserError(f"{key}.{k}: expected a list of numbers, got {v!r}")
            typed[k] = tuple(_number(f"{key}.{k}", e, float) for e in v)
        else:
            typed[k] = _number(f"{key}.{k}", v, type(known[k].default))
    return cls(**typed).validate()


def _max_trials(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"max_trials: expected an integer ≥ 1, got {value!r}")
    return value


def _grid(values: Any, max_trials: int) -> list[dict[str, list[Any]]]:
    """The grid's parts, refused before any expansion when their cartesian products hold more
    than ``max_trials`` points together."""
    parts = values if isinstance(values, list) else [values]
    if not parts:
        raise UserError("grid: empty; give at least one key with a list of values")
    grid = []
    for i, part in enumerate(parts):
        where = "grid" if not isinstance(values, list) else f"grid[{i}]"
        if not isinstance(part, Mapping) or not part:
            raise UserError(f"{where}: expected a non-empty mapping of key → list of values")
        axes = {}
        for key, options in part.items():
            if not isinstance(key, str) or key == "certify":
                raise UserError(f"{where}.{key}: cannot be gridded")
            if key not in TrialConfig.__dataclass_fields__:
                raise unknown_key(f"{where}.{key}", key, TrialConfig.__dataclass_fields__)
            options = options if isinstance(options, list) else [options]
            if not options:
                raise UserError(f"{where}.{key}: empty list of values")
            axes[key] = options
        grid.append(axes)
    points = sum(math.prod(len(options) for options in part.values()) for part in grid)
    if points > max_trials:
        raise UserError(f"grid: {points:,} trials, more than max_trials = {max_trials:,}; "
                        "raise it with --max-trials N (or the spec's max_trials) if you mean it")
    return grid


OPTIONAL_BLOCKS = ("attack_eval", "stages", "schedule")  # absent: the feature is off


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


def parse_spec(values: Any, overrides: Iterable[str] = ()) -> SweepSpec:
    """A validated spec; ``overrides`` are ``--set key=value`` on the defaults (or
    ``resources.key=value``, and for the optional blocks ``schedule.key=value`` or
    ``schedule=null``: :func:`_optional_block`); a gridded key cannot be overridden."""
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
    max_trials = _max_trials(values.get("max_trials", MAX_TRIALS))
    grid = _grid(values["grid"], max_trials)
    defaults = values.get("defaults") or {}
    if not isinstance(defaults, Mapping):
        raise UserError("defaults: expected a mapping of trial-config keys")
    resources = dict(values.get("resources") or {})
    overrides = list(overrides)
    res_overrides = [o.removeprefix("resources.") for o in overrides
                     if o.startswith("resources.")]
    optional = {block: _optional_block(values.get(block), overrides, block)
                for block in OPTIONAL_BLOCKS}
    trial_overrides = [o for o in overrides if not o.startswith("resources.")
                       and o.partition("=")[0].partition(".")[0] not in OPTIONAL_BLOCKS]
    gridded = {k for part in grid for k in part}
    for item in trial_overrides:
        key = item.partition("=")[0]
        if key in gridded:
            raise UserError(f"--set {key}: the key is gridded; edit the spec's grid instead")
    defaults = apply_overrides(defaults, trial_overrides)
    init_from_sweep = defaults.pop(INIT_FROM_SWEEP, values.get(INIT_FROM_SWEEP))
    if init_from_sweep is not None and not isinstance(init_from_sweep, str):
        raise UserError(f"{INIT_FROM_SWEEP}: expected the folder of a pre-training sweep")
    if init_from_sweep is not None and ("init_from" in defaults or "init_from" in gridded):
        raise UserError(f"{INIT_FROM_SWEEP}: give either init_from or {INIT_FROM_SWEEP}")
    resources = apply_overrides(resources, res_overrides)
    exclude = values.get("exclude") or []
    if not isinstance(exclude, list) or not all(isinstance(e, Mapping) for e in exclude):
        raise UserError("exclude: expected a list of mappings key → value (or list of values)")
    attack_eval, stages, schedule = optional["attack_eval"], optional["stages"], \
        optional["schedule"]
    spec = SweepSpec(
        name=name, defaults=dict(defaults), resources=_block(Resources, resources, "resources"),
        grid=grid, exclude=[dict(e) for e in exclude],
        attack_eval=None if attack_eval is None else _block(AttackEval, attack_eval,
                                                            "attack_eval"),
        init_from_sweep=init_from_sweep,
        stages=None if stages is None else _block(Stages, stages, "stages"),
        schedule=None if schedule is None else _block(Schedule, schedule, "schedule"),
        max_trials=max_trials,
    )
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


def _pretraining_trials(sweep_dir: str) -> list[Trial]:
    """The trials of the pre-training sweep ``sweep_dir`` (its sweep.yaml expanded); a spec
    that does not parse is one line naming that file."""
    try:
        return parse_spec(pretraining_spec(sweep_dir)).trials()
    except UserError as e:
        raise UserError(f"{INIT_FROM_SWEEP}: {Path(sweep_dir) / 'sweep.yaml'}: {e}") from None


def expand(spec: SweepSpec) -> list[Trial]:
    """The union of each grid part's cartesian product, minus excluded points, each validated."""
    trials: dict[str, Trial] = {}
    seen: set[tuple] = set()
    pretrained = (None if spec.init_from_sweep is None else pretrained_checkpoints(
        spec.init_from_sweep, _pretraining_trials(spec.init_from_sweep)))
    for part in spec.grid:
        keys = list(part)
        for combo in itertools.product(*(part[k] for k in keys)):
            params = dict(zip(keys, combo, strict=True))
            if _excluded(params, spec.exclude):
                continue
            identity = tuple(sorted((k, repr(v)) for k, v in params.items()))
            if identity in seen:
                continue
            seen.add(identity)
            name = trial_name(params)
            try:
                placeholder = {} if pretrained is None else {"init_from": spec.init_from_sweep}
                config = parse_trial_config({**spec.defaults, **params, **placeholder})
                if pretrained is not None:
                    path = pretrained_for(pretrained, spec.init_from_sweep, config.epsilon,
                                          config.sigma)
                    config = replace(config, init_from=str(path))
            except UserError as e:
                raise UserError(f"trial {name}: {e}") from None
            if name in trials:
                raise UserError(f"grid: trials {params} and {trials[name].params} share the "
                                f"name {name!r}; make their gridded values distinct")
            trials[name] = Trial(name, params, config)
    return list(trials.values())
