"""Opt-in ``torch.compile`` with a clean fallback: of the base classifier for certification
(:func:`compile_classifier`) and of the trained model (:class:`CompiledOrEager`, a trial's
``compile: true``).

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
