"""A sweep's input files, before anything starts: paths made absolute, datasets and files
checked to exist.

Trial workers do not run in the user's working directory, so relative ``data_root``,
``init_from`` and ``extra_data`` are made absolute against it when the sweep is created. On the
embedded local cluster the driver sees what the workers see, so a missing dataset or file is
refused up front in one line instead of failing every trial an hour later.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

from smoothadv.common.errors import UserError
from smoothadv.sweep.grid import Trial
from smoothadv.sweep.spec import SweepSpec

PATH_KEYS = ("data_root", "init_from", "extra_data")


def _absolute(key: str, value: Any) -> Any:
    if key in PATH_KEYS and isinstance(value, str) and "://" not in value:
        return str(Path(value).expanduser().absolute())
    return value


def with_absolute_paths(spec: SweepSpec) -> SweepSpec:
    """The spec with every path-valued key (in defaults, grid and exclude, and
    ``init_from_sweep``) absolute."""
    defaults = {k: _absolute(k, v) for k, v in spec.defaults.items()}
    grid = [{k: [_absolute(k, v) for v in values] for k, values in part.items()}
            for part in spec.grid]
    exclude = [{k: [_absolute(k, x) for x in v] if isinstance(v, list) else _absolute(k, v)
                for k, v in part.items()} for part in spec.exclude]
    init_from_sweep = (None if spec.init_from_sweep is None
                       else _absolute("init_from", spec.init_from_sweep))
    return replace(spec, defaults=defaults, grid=grid, exclude=exclude,
                   init_from_sweep=init_from_sweep)


def check_inputs(trials: Iterable[Trial]) -> None:
    """Every trial's dataset splits and input files exist here; the first missing one is a
    UserError naming the trial, the key and the path."""
    from smoothadv.trainers.datasets import locate_dataset

    seen: set[tuple] = set()
    for trial in trials:
        c = trial.config
        if (c.dataset, c.data_root) not in seen:
            seen.add((c.dataset, c.data_root))
            for split in ("train", "test"):
                try:
                    locate_dataset(c.dataset, split, c.data_root)
                except UserError as e:
                    raise UserError(f"trial {trial.name}: data_root: {e}") from None
        for key in ("init_from", "extra_data"):
            path = getattr(c, key)
            if path is not None and not Path(path).is_file():
                raise UserError(f"trial {trial.name}: {key}: {path} does not exist")
