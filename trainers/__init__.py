"""Data, models, checkpoints, attacks and the SmoothAdv training loop.

Names are imported on first use, so ``smoothadv --help`` and error paths need not load torch.
"""

from importlib import import_module

_EXPORTS = {
    "ARCHS": "smoothadv.trainers.models",
    "build_model": "smoothadv.trainers.models",
    "DATASETS": "smoothadv.trainers.registry",
    "DatasetInfo": "smoothadv.trainers.registry",
    "dataset_info": "smoothadv.trainers.registry",
    "load_dataset": "smoothadv.trainers.datasets",
    "load_checkpoint": "smoothadv.trainers.checkpoint",
    "model_from_checkpoint": "smoothadv.trainers.checkpoint",
    "save_checkpoint": "smoothadv.trainers.checkpoint",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'trainers' has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)
