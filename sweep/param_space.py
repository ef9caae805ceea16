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

The trial driver identifies its trial by Tune's trial name (set from the record's name, and
kept by Tune through every restore and restart) and trains the config the sweep's spec
(sweep.yaml) gives that name; the record's config must equal it. A record that is not this
module's shape (a damaged experiment state) does not keep a trial from running: the spec is
the authority.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from smoothadv.common.errors import UserError
from smoothadv.sweep.spec import SweepSpec, Trial

KEY = "trial"  # the param space's grid key; its records: {"name", gridded values…, "config"}


def record(trial: Trial) -> dict[str, Any]:
    """A trial as Tune holds it: its name, each gridded value (a key some union part does not
    grid is absent) and its full config, all plain values."""
    params = {k: v for k, v in trial.params.items() if v is not None}
    return {"name": trial.name, **params, "config": trial.config.to_dict()}


def param_space(trials: list[Trial], stage: int = 0) -> dict[str, Any]:
    """One ``grid_search`` over the trials' records; in a staged sweep, the stage
    (sweep.staging) as a constant."""
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


def trial_of(name: str, config: Mapping[str, Any], spec: SweepSpec) -> Trial:
    """The trial ``name`` of ``spec``; Tune's record of it (``config``), when it has this
    module's shape, must hold the same config."""
    trial = next((t for t in spec.trials() if t.name == name), None)
    if trial is None:
        raise UserError(f"trial {name}: not in the sweep's spec")
    entry = config.get(KEY)
    if isinstance(entry, Mapping) and isinstance(entry.get("config"), Mapping) \
            and _plain(entry["config"]) != _plain(trial.config.to_dict()):
        raise UserError(f"trial {name}: Tune's record of its config differs from the "
                        "sweep's spec")
    return trial


def _plain(value: Any) -> Any:
    """``value`` as JSON would give it back (tuples as lists), for comparing records."""
    return json.loads(json.dumps(value))
