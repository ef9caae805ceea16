"""Data, models, checkpoints, attacks and the SmoothAdv training loop.

Names are imported on first use, so ``smoothadv --help`` and error paths need not load torch.
"""

from importlib import import_module

_EXPORTS = {
    "ARCHS": "trainers.models",
    "build_model": "trainers.models",
    "DATASETS": "trainers.registry",
    "DatasetInfo": "trainers.registry",
    "dataset_info": "trainers.registry",
    "load_dataset": "trainers.datasets",
    "load_checkpoint": "trainers.checkpoint",
    "model_from_checkpoint": "trainers.checkpoint",
    "save_checkpoint": "trainers.checkpoint",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'trainers' has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)
