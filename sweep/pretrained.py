"""Fine-tuning from a pre-training sweep (SmoothAdv Table 2, pre-training row).

The SmoothAdv reference pre-trains one ImageNet-32 model per (ε, σ) and fine-tunes each on
CIFAR-10 with that same (ε, σ). A fine-tuning spec names the pre-training sweep folder
(``init_from_sweep``); every fine-tuning trial then starts from the finished pre-training trial
whose config has its ε and σ. The mapping is read from the pre-training sweep's own files
(``sweep.yaml`` for each trial's config, ``state.json`` for whether it finished), so it is
resolved, and a missing pair refused, before anything starts.
"""

from __future__ import annotations

from pathlib import Path

from smoothadv.common import layout
from smoothadv.common.errors import UserError
from smoothadv.common.records import read_state
from smoothadv.sweep.spec_record import read_spec_values

KEY = "init_from_sweep"


def pretraining_spec(sweep_dir: str | Path) -> dict:
    """The pre-training sweep's spec as run (its ``sweep.yaml``), for sweep.spec to parse; a
    folder without one, or a damaged one, is one UserError line (naming the file)."""
    folder = Path(sweep_dir)
    path = folder / layout.SPEC
    if not path.is_file():
        raise UserError(f"{KEY}: {folder} is not a readable sweep folder (no {layout.SPEC})")
    try:
        return read_spec_values(path)
    except UserError as e:
        raise UserError(f"{KEY}: {e}") from None


def pretrained_checkpoints(sweep_dir: str | Path, trials) -> dict[tuple[float, float], Path]:
    """(ε, σ) → checkpoint of the pre-training sweep's finished trial with that ε and σ
    (``trials``: that sweep's trials, as sweep.spec expands its spec)."""
    folder = Path(sweep_dir)
    found: dict[tuple[float, float], Path] = {}
    names: dict[tuple[float, float], str] = {}
    for trial in trials:
        key = (trial.config.epsilon, trial.config.sigma)
        if key in names:
            raise UserError(f"{KEY}: {folder} has two pre-trained models for "
                            f"{_pair(key)} ({names[key]}, {trial.name}); use one per pair")
        names[key] = trial.name
        tdir = layout.trial_dir(folder, trial.name)
        state = (read_state(tdir / layout.STATE) or {}).get("state", "PENDING")
        if state == "TERMINATED" and (tdir / layout.CHECKPOINT).is_file():
            found[key] = tdir / layout.CHECKPOINT
    return found


def pretrained_for(models: dict[tuple[float, float], Path], sweep_dir: str, epsilon: float,
                   sigma: float) -> Path:
    """The checkpoint for (ε, σ), or a UserError naming the pair."""
    try:
        return models[(epsilon, sigma)]
    except KeyError:
        raise UserError(f"{KEY}: {sweep_dir} has no finished pre-trained model for "
                        f"{_pair((epsilon, sigma))}") from None


def _pair(key: tuple[float, float]) -> str:
    return f"epsilon={key[0]:g}, sigma={key[1]:g}"
