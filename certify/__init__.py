"""Randomized-smoothing certification (Cohen et al. 2019) and the SmoothAdv attack.

Names are imported on first use, so the torch-free :mod:`certify.settings` loads without torch.
"""

from importlib import import_module

__all__ = ["ABSTAIN", "Smooth", "clopper_pearson_lower"]


def __getattr__(name: str):
    if name not in __all__:
        raise AttributeError(f"module 'certify' has no attribute {name!r}")
    return getattr(import_module("certify.smooth"), name)
