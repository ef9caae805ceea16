"""Which torch device a run uses: the one place that decides what "auto" means."""

from __future__ import annotations

import torch

AUTO = "auto"


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` as a torch device; ``None`` or ``"auto"`` is the first CUDA GPU when one is
    available, otherwise the CPU."""
    if device is None or device == AUTO:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)
