"""``torch.compile`` with a clean fallback: of the base classifier for certification
(:func:`compile_classifier`; by default when the run repays it,
:func:`certification_repays_compiling`) and of the trained model (:class:`CompiledOrEager`, a
trial's ``compile``; by default by model size and run length, :func:`training_repays_compiling`).

:func:`compile_classifier` compiles the model (inductor, default mode, static shapes) and runs
one probe forward pass, so a missing or broken compiler (inductor on CPU needs a working C++
compiler, on CUDA Triton) shows before any row is written: then the eager model is used, with
one line saying why, and the run records ``"compiled": false``. A later compilation that fails
(a new batch shape recompiles) switches to the eager model for the rest of the run, again with
one line. Either way the rows stay valid: compiled and eager passes compute the same function,
up to float reordering, which can flip the argmax of a rare noisy sample lying within rounding
of a decision boundary (tests/test_kernels.py bounds the disagreement).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

import torch
from torch import nn
from tqdm import tqdm


def _compiler_errors() -> tuple[type[BaseException], ...]:
    """What a failing compiler or backend raises (inductor's errors arrive wrapped in dynamo's
    BackendCompilerFailed; the bare ones are listed in case one escapes unwrapped)."""
    from torch._dynamo.exc import BackendCompilerFailed
    from torch._inductor.exc import CppCompileError, InvalidCxxCompiler

    return BackendCompilerFailed, CppCompileError, InvalidCxxCompiler


def _reason(error: BaseException) -> str:
    """The first line of the error that made compilation fail (the backend's own, unwrapped)."""
    inner = getattr(error, "inner_exception", None) or error
    lines = [line.strip() for line in str(inner).splitlines() if line.strip()]
    text = lines[0] if lines else ""
    if not text.startswith(type(inner).__name__):
        text = f"{type(inner).__name__}: {text}"
    return text[:200]


# Compiling pays only for a model whose forward pass takes at least MIN_SAMPLE_FLOPS a sample,
# and only in a run long enough to repay the compilation. Measured on 2 CPU threads with a fresh
# inductor cache (a user's first run), 400 samples a forward pass, noise and counting included:
# LeNet on Fashion-MNIST (6.0 MFLOP a sample) compiles in 11 s and then runs 1.02× (a training
# step 0.86×): never worth it; ResNet-20 on CIFAR-10 (81.6 MFLOP) compiles in 16 s and runs
# 1.52× (a SmoothAdv step 1.36-1.68×): the size threshold lies between them.
MIN_SAMPLE_FLOPS = 20e6
# Certification compiles by default (``compile`` unset) from this many forward-pass FLOPs in
# the run: ResNet-20 repays its 16 s of compiling after eager time × (1 − 1/1.52) > 16 s, 46 s
# at 96 GFLOP/s, 4.4e12 FLOPs, so one image at n = 100,000 (8.2e12) compiles and a test's
# few hundred samples never do. CUDA's is unmeasured (no GPU was lent): ~1 min of compiling at
# tens of TFLOP/s and a speed-up assumed ≥ 1.3× gives ~5e15 (ResNet-110 from ~100 images at
# n = 100,000).
CERTIFY_MIN_FLOPS = {"cpu": 5e12, "cuda": 5e15}


def forward_flops(model: nn.Module, example: torch.Tensor) -> int:
    """FLOPs of ``model`` on one sample ``example`` (C×H×W), its matmuls and convolutions as
    torch.utils.flop_counter counts them (0 for a model without either)."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter, torch.inference_mode():
            model(example.unsqueeze(0))
    finally:
        model.train(was_training)
    return counter.get_total_flops()


def certification_repays_compiling(model: nn.Module, example: torch.Tensor, samples: int,
                                   device: torch.device) -> bool:
    """Whether ``model`` takes at least MIN_SAMPLE_FLOPS on a sample like ``example`` and its
    ``samples`` forward passes reach CERTIFY_MIN_FLOPS for ``device``'s type (any other
    device type: never)."""
    threshold = CERTIFY_MIN_FLOPS.get(torch.device(device).type)
    if threshold is None:
        return False
    flops = forward_flops(model, example)
    return flops >= MIN_SAMPLE_FLOPS and flops * samples >= threshold


# Training compiles by default (``compile`` unset) for a model of at least MIN_SAMPLE_FLOPS
# and a trial long enough to repay compiling its forward and backward graphs (~40 s for
# ResNet-20 on 2 CPU threads): at ~60 GFLOP/s eager and 1.5× compiled that is ~120 s of eager
# training, ~7e12 FLOPs, so the CPU's threshold is 1e13. CUDA's is unmeasured (~1 min of
# compiling, a speed-up assumed ≥ 1.3×, tens of TFLOP/s: ~1e16, a few epochs of CIFAR-10 on
# ResNet-110).
TRAIN_MIN_FLOPS = {"cpu": 1e13, "cuda": 1e16}


def training_repays_compiling(model: nn.Module, example: torch.Tensor, passes: int,
                              device: torch.device) -> bool:
    """Whether training ``model`` on samples like ``example`` repays compiling it: a forward
    pass of at least MIN_SAMPLE_FLOPS a sample, and ``passes`` sample passes (forward and
    backward each, the trial's whole training) of at least TRAIN_MIN_FLOPS for ``device``'s
    type, a backward pass counted as twice a forward."""
    threshold = TRAIN_MIN_FLOPS.get(torch.device(device).type)
    if threshold is None:
        return False
    flops = forward_flops(model, example)
    return flops >= MIN_SAMPLE_FLOPS and 3 * flops * passes >= threshold


def say(message: str) -> None:
    """One notice line on stderr, kept clear of a progress bar."""
    tqdm.write(f"smoothadv: {message}", file=sys.stderr)


def compile_classifier(
    model: nn.Module,
    example: torch.Tensor | None,
    *,
    context: Callable[[], AbstractContextManager] = nullcontext,
    backend: str | Callable = "inductor",
    notify: Callable[[str], None] = say,
) -> tuple[Callable[[torch.Tensor], torch.Tensor], bool]:
    """(forward, compiled): :class:`CompiledOrEager` around ``model`` (static shapes) and True
    when a probe forward pass on ``example`` (a batch; None: no probe) compiles, else ``model``
    and False with one line saying why.

    The probe runs as certification will (``model`` in eval mode, its mode restored after;
    inference mode; inside ``context()``, the precision), so its compiled graph is reused."""
    compiled = CompiledOrEager(model, backend=backend, dynamic=False, notify=notify)
    if example is not None:
        was_training = model.training
        model.eval()
        try:
            with context(), torch.inference_mode():
                compiled.probe(example)
        except _compiler_errors() as e:
            notify(f"torch.compile unavailable ({_reason(e)}); certifying with the eager model")
            return model, False
        finally:
            model.train(was_training)
    return compiled, True


class CompiledOrEager(nn.Module):
    """``module`` called through ``torch.compile`` (inductor; ``dynamic`` as torch.compile's)
    until a compilation fails, then eagerly for good, saying so once. It holds ``module``
    itself, so parameters, buffers, train/eval mode and gradients are the module's; forward
    and backward passes compute the same function either way, up to float reordering. A
    failure shows at a forward call, before any gradient or update."""

    def __init__(self, module: nn.Module, *, backend: str | Callable = "inductor",
                 dynamic: bool | None = None, notify: Callable[[str], None] = say):
        super().__init__()
        self.module = module
        self.notify = notify
        # kept in a list, outside the module tree: state_dict() and parameters() stay module's
        self._compiled = [torch.compile(module, backend=backend, dynamic=dynamic)]

    @property
    def compiled(self) -> bool:
        """Whether forward passes still go through the compiler (no compilation failed)."""
        return bool(self._compiled)

    def probe(self, x: torch.Tensor) -> torch.Tensor:
        """One compiled forward pass whose compiler error, if any, is raised, not handled."""
        return self._compiled[0](x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._compiled:
            try:
                return self._compiled[0](x)
            except _compiler_errors() as e:
                self._compiled.clear()
                self.notify(f"torch.compile failed ({_reason(e)}); the rest of this run is "
                            "eager")
        return self.module(x)
