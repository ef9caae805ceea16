"""Achieved FLOP/s against the device's own limit, measured in the same run (issue 25, item 3).

A benchmark counts the FLOPs of the call it times with :func:`count_flops` (PyTorch's
``torch.utils.flop_counter``: matrix multiplications and convolutions, forward and, when the
call runs backward, backward; element-wise work such as batch norm, ReLU or the optimizer's
update counts nothing), divides them by the call's time and sets the result against
:func:`matmul_peak`, the dense-matmul FLOP/s of square matmuls measured now on the same device
and dtype. :func:`flops_line` prints both and their ratio, so "how far from the limit" is one
number on any machine.

On CUDA a float32 model's convolutions run in TF32 unless ``torch.backends.cudnn.allow_tf32``
is off (PyTorch turns it on by default; certification turns it off for float32:
certify.precision), so the float32 peak follows that flag by default (``tf32=None``) and is
labelled ``tf32`` when it is on: the peak of the math the model's convolutions run in.

Imported by the benchmarks as a sibling (``from flops import ...``: run them as scripts) and by
tests/test_flops.py by file path.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import contextmanager

import torch
from torch.utils.flop_counter import FlopCounterMode

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bf16": torch.bfloat16,
          "bfloat16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bf16", torch.float16: "float16"}


def count_flops(fn: Callable, *args, **kwargs) -> int:
    """FLOPs of one call ``fn(*args, **kwargs)`` (forward and backward, when it runs backward)."""
    counter = FlopCounterMode(display=False)
    with counter:
        fn(*args, **kwargs)
    return int(counter.get_total_flops())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _dtype(dtype: torch.dtype | str) -> torch.dtype:
    return DTYPES[dtype] if isinstance(dtype, str) else dtype


def _uses_tf32(device: torch.device, dtype: torch.dtype, tf32: bool | None) -> bool:
    if device.type != "cuda" or dtype != torch.float32:
        return False
    return torch.backends.cudnn.allow_tf32 if tf32 is None else tf32


def precision_label(device: torch.device | str, dtype: torch.dtype | str,
                    tf32: bool | None = None) -> str:
    """``float32``, ``tf32``, ``bf16``…: the math a peak of ``matmul_peak`` was measured in."""
    device, dtype = torch.device(device), _dtype(dtype)
    if _uses_tf32(device, dtype, tf32):
        return "tf32"
    return DTYPE_NAMES.get(dtype, str(dtype).removeprefix("torch."))


@contextmanager
def _matmul_tf32(on: bool):
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = on
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved


def matmul_peak(device: torch.device | str, dtype: torch.dtype | str = torch.float32,
                size: int | None = None, seconds: float | None = None, repeats: int = 5,
                tf32: bool | None = None) -> float:
    """Dense-matmul FLOP/s on ``device`` in ``dtype``, measured now: square ``size``×``size``
    matmuls (2·size³ FLOPs each; default 1,024 on a CPU, 8,192 on a GPU), after a warm-up, the
    best of ``repeats`` rounds of about ``seconds``/``repeats`` each (default 1 s on a CPU,
    0.3 s on a GPU), synchronized on CUDA. A CPU too slow for ``size`` (one matmul over a
    tenth of the budget, e.g. bf16 without hardware support) is measured at half the size
    until it fits. On CUDA a float32 peak is TF32's where ``tf32`` (None: cuDNN's flag)."""
    device, dtype = torch.device(device), _dtype(dtype)
    cuda = device.type == "cuda"
    size = size or (8192 if cuda else 1024)
    seconds = seconds if seconds is not None else (0.3 if cuda else 1.0)
    with _matmul_tf32(_uses_tf32(device, dtype, tf32)):
        return _measure(device, dtype, size, seconds, max(1, repeats))


def _measure(device: torch.device, dtype: torch.dtype, size: int, seconds: float,
             repeats: int) -> float:
    while True:
        gen = torch.Generator(device=device).manual_seed(0)
        a = torch.randn((size, size), device=device, dtype=dtype, generator=gen)
        b = torch.randn((size, size), device=device, dtype=dtype, generator=gen)
        torch.mm(a, b)  # warm-up: kernels, allocator, thread pool
        _sync(device)
        t0 = time.perf_counter()
        torch.mm(a, b)
        _sync(device)
        one = max(time.perf_counter() - t0, 1e-9)
        if device.type == "cuda" or size <= 64 or one <= seconds / 10:
            break
        size //= 2
    per_round = max(1, round(seconds / repeats / one))
    best = math.inf
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(per_round):
            torch.mm(a, b)
        _sync(device)
        best = min(best, (time.perf_counter() - t0) / per_round)
    return 2 * size**3 / best


def flops_line(flops: float, seconds: float, peak: float, device: torch.device | str,
               precision: str) -> str:
    """One line: achieved FLOP/s (``flops`` in ``seconds``) against the dense-matmul ``peak``
    measured on ``device`` in ``precision`` (a :func:`precision_label`), and their ratio."""
    achieved = flops / seconds
    return (f"achieved {achieved / 1e9:.1f} GFLOP/s = {flops:.3e} FLOPs / {seconds:.4g} s; "
            f"dense-matmul peak {peak / 1e9:.1f} GFLOP/s ({device_name(device)}, {precision}); "
            f"fraction of peak {achieved / peak:.3f}")


def fraction_of_peak(line: str) -> float:
    """The ratio a :func:`flops_line` reports (for tests and scripts reading the output)."""
    return float(line.rsplit("fraction of peak ", 1)[1])


def device_name(device: torch.device | str) -> str:
    """``cuda:0 NVIDIA H100 80GB HBM3`` or ``cpu, 2 threads``."""
    device = torch.device(device)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} {torch.cuda.get_device_name(index)}"
    return f"{device.type}, {torch.get_num_threads()} threads"


class Peaks:
    """Each (device, dtype, TF32) peak measured once per run, when first asked for."""

    def __init__(self, **options):
        self.options = options
        self.measured: dict[tuple[str, str], float] = {}

    def line(self, flops: float, seconds: float, device: torch.device | str,
             dtype: torch.dtype | str, tf32: bool | None = None) -> str:
        """:func:`flops_line` against the peak of ``dtype`` on ``device``, under the TF32
        flags in force now (see :func:`matmul_peak`)."""
        label = precision_label(device, dtype, tf32)
        key = (str(torch.device(device)), label)
        if key not in self.measured:
            self.measured[key] = matmul_peak(device, dtype, tf32=tf32, **self.options)
        return flops_line(flops, seconds, self.measured[key], device, label)
