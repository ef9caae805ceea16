"""Tune's view of the grid, as plain data.

Ray 2.60 stores a Tuner's param space in its experiment state, and a restored experiment
creates the trials it had not started yet from that stored copy. Anything but plain values
(numbers, strings, lists, dicts) is replaced there by a placeholder that only the first run's
process can resolve (``ray.tune.impl.placeholder``): a ``tune.sample_from`` function, for one,
comes back from ``Tuner.restore`` as the tuple ``("__fn_ph", hash)`` in every trial that had
not started. So the grid goes to Tune as one ``grid_search`` over per-trial records that hold
only plain values: the trial's name, its gridded values and its full config. Tune shows each
record's values as columns (``ResultGrid.get_dataframe()``: ``config/trial/sigma``, …) and as
TensorBoard HParams (``trial/sigma``, …).

The trial driver takes its trial from Tune's record of it (:func:`trial_from_record`): Tune
hands the record to the driver through every restore and restart, Tune's restore point is
signed (sweep.trust), and the record's config is validated once there, in the driver, which
hands the validated config to its workers. Nothing re-expands the grid per trial.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from smoothadv.common.errors import UserError
from smoothadv.sweep.grid import Trial

KEY = "trial"  # the param space's grid key; its records: {"name", gridded values…, "config"}


def record(trial: Trial) -> dict[str, Any]:
    """A trial as Tune holds it: its name, each gridded value (a key some union part does not
    grid is absent) and its full config, all plain values."""
    params = {k: v for k, v in trial.params.items() if v is not None}
    return {"name": trial.name, **params, "config": trial.config.to_dict()}


def param_space(trials: list[Trial], stage: int = 0) -> dict[str, Any]:
    """One ``grid_search`` over the trials' records; in a staged sweep, the stage
    (sweep.staged_sweep) as a constant."""
    from ray import tune

    space: dict[str, Any] = {KEY: tune.grid_search([record(t) for t in trials])}
    if stage:
        space["stage"] = stage
    return space


def trial_name(tune_trial) -> str:
    """Tune's name (and folder name) for a trial: its record's name (trial_name_creator);
    Tune's trial id for a config that is not this module's shape (it never fails Tune)."""
    return name_of(tune_trial.config) or tune_trial.trial_id


def name_of(config: Mapping[str, Any]) -> str | None:
    """The trial's name in a Tune config (None when the record is not this module's shape)."""
    entry = config.get(KEY)
    return entry.get("name") if isinstance(entry, Mapping) else None


def trial_from_record(config: Mapping[str, Any]) -> Trial:
    """The trial Tune's ``config`` (a variant of :func:`param_space`) runs: its name, gridded
    values and validated config; a record not of this module's shape is one line."""
    from smoothadv.trainers.config import parse_trial_config

    entry = config.get(KEY)
    if not (isinstance(entry, Mapping) and isinstance(entry.get("name"), str)
            and isinstance(entry.get("config"), Mapping)):
        raise UserError(f"Tune's record of this trial is not a smoothadv trial record "
                        f"(keys {sorted(entry) if isinstance(entry, Mapping) else entry!r})")
    name = entry["name"]
    params = {k: v for k, v in entry.items() if k not in ("name", "config")}
    try:
        return Trial(name, params, parse_trial_config(entry["config"]))
    except UserError as e:
        raise UserError(f"trial {name}: {e}") from None
