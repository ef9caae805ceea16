"""The settings that determine certification and attack numbers, defined and validated once.

``SamplingKeys`` (CERTIFY/PREDICT) and ``AttackKeys`` (the SmoothAdv attack) hold what a user
sets: a trial's ``certify`` block and a sweep's ``attack_eval`` block extend them with image
selection, ``Sampling`` and ``AttackSettings`` with the trial's noise level and seed (what is
recorded beside the output). ``validate(prefix)`` names a bad value ``{prefix}{key}``
(``certify.n0``, ``attack_eval.m_test``; no prefix on the command line); ``sigma`` comes from
the trial or ``--sigma`` and is never prefixed. Torch-free, so sweep specs are checked without it.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, fields
from typing import Any, Self

from smoothadv.common.errors import UserError
from smoothadv.common.validation import check_at_least

SEED_LIMIT = 2**63  # seeds are integers in [0, 2**63): numpy's SeedSequence takes no negatives


def check_sigma(sigma: Any, key: str = "sigma") -> None:
    """A noise level: a finite number > 0 (inf and nan are refused)."""
    if (isinstance(sigma, bool) or not isinstance(sigma, numbers.Real)
            or not (math.isfinite(sigma) and sigma > 0)):
        raise UserError(f"{key}: must be > 0 and finite, got {sigma!r}")


def check_seed(seed: Any, key: str = "seed") -> None:
    """A noise or training seed: an integer in [0, 2**63)."""
    if (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)
            or not 0 <= seed < SEED_LIMIT):
        raise UserError(f"{key}: must be an integer in [0, 2**63), got {seed!r}")


def _keys(block: object, keys: type) -> dict[str, Any]:
    """The values ``block`` holds for the fields of ``keys`` (a block without its extras)."""
    return {f.name: getattr(block, f.name) for f in fields(keys)}


@dataclass(frozen=True, kw_only=True)
class SamplingKeys:
    """Cohen et al.'s sampling: ``n0`` samples choose the top class (None: PREDICT, which
    chooses none), ``n`` samples bound its probability with failure probability ``alpha``."""

    n0: int | None = None
    n: int = 100_000
    alpha: float = 0.001

    def validate(self, prefix: str = "") -> Self:
        if self.n0 is not None:  # None: PREDICT, which chooses no class
            check_at_least(self, prefix, 1, "n0")
        check_at_least(self, prefix, 1, "n")
        if not 0 < self.alpha < 0.5:
            raise UserError(f"{prefix}alpha: must lie in (0, 0.5), got {self.alpha}")
        return self

    def with_noise(self, sigma: float, seed: int) -> Sampling:
        """These keys with the noise level ``sigma`` and noise seed ``seed``."""
        return Sampling(sigma=sigma, seed=seed, **_keys(self, SamplingKeys))


@dataclass(frozen=True, kw_only=True)
class _Noise:
    """The noise level ``sigma`` and noise seed joined to a block's keys (first in the bases,
    so ``validate`` checks ``sigma``, the trial's key or ``--sigma``, then the keys)."""

    sigma: float
    seed: int = 0

    def validate(self, prefix: str = "") -> Self:
        check_sigma(self.sigma)
        check_seed(self.seed)
        return super().validate(prefix)


@dataclass(frozen=True, kw_only=True)
class Sampling(_Noise, SamplingKeys):
    """Settings that determine a certification's numbers (recorded beside the output).

    ``sequential`` (CERTIFY only; :meth:`certify.smooth.Smooth.certify_sequential`) draws the
    ``n`` samples in stages and stops an image early; ``target_radius`` (only with it) adds the
    early stop once the certified radius reaches it. Both are in the record (:meth:`record`),
    so a file is never resumed in the other mode."""

    sequential: bool = False
    target_radius: float | None = None

    def validate(self, prefix: str = "") -> Self:
        super().validate(prefix)
        if self.sequential and self.n0 is None:
            raise UserError("sequential: only for CERTIFY (give n0)")
        if self.target_radius is not None:
            if not self.sequential:
                raise UserError("target_radius: only with sequential")
            if not (math.isfinite(self.target_radius) and self.target_radius > 0):
                raise UserError(f"target_radius: must be finite and > 0, got "
                                f"{self.target_radius}")
        return self

    def record(self) -> dict[str, Any]:
        """The settings record's keys: every key, but n0 only where it is used (CERTIFY, not
        PREDICT); ``target_radius`` None when unset."""
        return {k: v for k, v in asdict(self).items() if k != "n0" or v is not None}


@dataclass(frozen=True, kw_only=True)
class AttackKeys:
    """SmoothAdv-PGD at each ℓ2 radius of ``epsilons`` ([0,1] pixel units) with ``steps`` steps
    and ``m_test`` noise samples (paper: 20 steps, m_test = 128), then PREDICT with ``n``
    samples and failure probability ``alpha``."""

    epsilons: tuple[float, ...]
    steps: int = 20
    m_test: int = 128
    n: int = 100_000
    alpha: float = 0.001

    def __post_init__(self) -> None:
        # Floats (with −0.0 folded into 0.0) so keys, seeds and the settings record agree.
        object.__setattr__(self, "epsilons", tuple(float(e) + 0.0 for e in self.epsilons))

    def validate(self, prefix: str = "") -> Self:
        SamplingKeys(n=self.n, alpha=self.alpha).validate(prefix)
        radii = f"{prefix}epsilons" if prefix else "epsilon"  # the command line's --epsilon
        if not self.epsilons:
            raise UserError(f"{radii}: give at least one radius")
        for e in self.epsilons:
            if not (math.isfinite(e) and e >= 0):
                raise UserError(f"{radii}: must be finite and ≥ 0, got {e}")
        if len(set(self.epsilons)) != len(self.epsilons):
            raise UserError(f"{radii}: each radius once, got {list(self.epsilons)}")
        check_at_least(self, prefix, 1, "steps", "m_test")
        return self

    def record(self) -> dict[str, Any]:
        """The settings in JSON/YAML types (epsilons a list), so a reread compares equal."""
        return {**asdict(self), "epsilons": list(self.epsilons)}

    def with_noise(self, sigma: float, seed: int) -> AttackSettings:
        """These keys with the noise level ``sigma`` and noise seed ``seed``."""
        return AttackSettings(sigma=sigma, seed=seed, **_keys(self, AttackKeys))


@dataclass(frozen=True, kw_only=True)
class AttackSettings(_Noise, AttackKeys):
    """Settings that determine an attack run's numbers (recorded beside the output)."""
