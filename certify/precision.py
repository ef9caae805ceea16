"""The floating-point precision certification and the empirical attack run in.

Floating point already makes randomized-smoothing certificates slightly unsound (Voráček & Hein
2023), so they run in full float32 unless asked otherwise. On CUDA that means TF32 off for both
matrix multiplications (``torch.backends.cuda.matmul.allow_tf32``) and cuDNN convolutions
(``torch.backends.cudnn.allow_tf32``, on by default in PyTorch). The precision used is recorded
beside the results ("float32" or "tf32"); CPUs have no TF32, so there it is always "float32".
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

FLOAT32 = "float32"
TF32 = "tf32"


def precision_name(device: str | torch.device, allow_tf32: bool = False) -> str:
    """The precision :func:`evaluation_precision` runs in on ``device``."""
    return TF32 if allow_tf32 and torch.device(device).type == "cuda" else FLOAT32


@contextmanager
def evaluation_precision(device: str | torch.device, allow_tf32: bool = False) -> Iterator[str]:
    """Inside: on CUDA, TF32 for matmuls and cuDNN set to ``allow_tf32`` (the previous flags are
    restored on exit); yields :func:`precision_name`."""
    name = precision_name(device, allow_tf32)
    if torch.device(device).type != "cuda":
        yield name
        return
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    saved = matmul.allow_tf32, cudnn.allow_tf32
    matmul.allow_tf32 = cudnn.allow_tf32 = allow_tf32
    try:
        yield name
    finally:
        matmul.allow_tf32, cudnn.allow_tf32 = saved
