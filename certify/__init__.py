"""Randomized-smoothing certification (Cohen et al. 2019) and the SmoothAdv attack.

Names are imported on first use, so importing a submodule loads only what it needs.
"""

from importlib import import_module

__all__ = ["ABSTAIN", "Smooth", "clopper_pearson_lower"]


def __getattr__(name: str):
    if name not in __all__:
        raise AttributeError(f"module 'certify' has no attribute {name!r}")
    return getattr(import_module("smoothadv.certify.smooth"), name)
