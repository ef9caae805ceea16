"""The floating-point precision certification and the empirical attack run in.

Floating point already makes randomized-smoothing certificates slightly unsound (Voráček & Hein
2023), so they run in full float32 unless asked otherwise. On CUDA that means TF32 off for both
matrix multiplications (``torch.backends.cuda.matmul.allow_tf32``) and cuDNN convolutions
(``torch.backends.cudnn.allow_tf32``, on by default in PyTorch). The precision used is recorded
beside the results ("float32", "tf32" or "bfloat16"); CPUs have no TF32, so there "tf32" is
"float32".

Asked for (``--precision``): ``float32`` (the default), ``tf32`` (the same as ``--allow-tf32``)
or ``bf16``: the base classifier's forward passes under ``torch.autocast`` to bfloat16 (CPU
and CUDA; TF32 stays off for what autocast leaves in float32). bfloat16 keeps 8 bits of
mantissa, so logits that float32 tells apart may round to a tie or swap: on a model with clear
margins the class counts barely move, near a decision boundary they can, and a certificate
computed from them is only as sound as those counts (recorded, so never mixed with float32 rows).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import torch
from smoothadv.common.errors import UserError

FLOAT32 = "float32"
TF32 = "tf32"
BFLOAT16 = "bfloat16"
# The choices of --precision (bf16 is recorded as "bfloat16").
CHOICES = ("float32", "tf32", "bf16")


def requested_precision(precision: str | None = None, allow_tf32: bool = False) -> str:
    """The choice of ``CHOICES`` asked for: ``precision``, else tf32 with ``allow_tf32``, else
    float32; ``allow_tf32`` with another ``precision`` is refused."""
    if precision is None:
        return "tf32" if allow_tf32 else "float32"
    if precision not in CHOICES:
        raise UserError(f"precision: unknown {precision!r}; one of {list(CHOICES)}")
    if allow_tf32 and precision != "tf32":
        raise UserError(f"--allow-tf32 is --precision tf32; it contradicts --precision "
                        f"{precision}")
    return precision


def precision_name(device: str | torch.device, allow_tf32: bool = False,
                   precision: str | None = None) -> str:
    """The precision :func:`evaluation_precision` runs in on ``device`` (the recorded name)."""
    choice = requested_precision(precision, allow_tf32)
    if choice == "bf16":
        return BFLOAT16
    return TF32 if choice == "tf32" and torch.device(device).type == "cuda" else FLOAT32


@contextmanager
def evaluation_precision(device: str | torch.device, allow_tf32: bool = False,
                         precision: str | None = None) -> Iterator[str]:
    """Inside: on CUDA, TF32 for matmuls and cuDNN on for tf32 only (the previous flags are
    restored on exit); for bf16, autocast to bfloat16 on ``device``'s type; yields
    :func:`precision_name`."""
    name = precision_name(device, allow_tf32, precision)
    device_type = torch.device(device).type
    with ExitStack() as stack:
        if device_type == "cuda":
            matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
            saved = matmul.allow_tf32, cudnn.allow_tf32
            stack.callback(_restore_tf32, saved)
            matmul.allow_tf32 = cudnn.allow_tf32 = name == TF32
        if name == BFLOAT16:
            stack.enter_context(torch.autocast(device_type, dtype=torch.bfloat16))
        yield name


def _restore_tf32(saved: tuple[bool, bool]) -> None:
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
