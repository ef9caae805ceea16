"""Randomized-smoothing certification (Cohen et al. 2019) and, later, the SmoothAdv attack."""

from certify.smooth import ABSTAIN, Smooth, clopper_pearson_lower

__all__ = ["ABSTAIN", "Smooth", "clopper_pearson_lower"]
