"""Data, models, checkpoints and (later) the SmoothAdv training loop."""

from trainers.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from trainers.datasets import DATASETS, DatasetInfo, dataset_info, load_dataset
from trainers.errors import UserError
from trainers.models import ARCHS, build_model

__all__ = [
    "ARCHS",
    "DATASETS",
    "DatasetInfo",
    "UserError",
    "build_model",
    "dataset_info",
    "load_checkpoint",
    "load_dataset",
    "model_from_checkpoint",
    "save_checkpoint",
]
