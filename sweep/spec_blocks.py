"""A sweep spec's settings blocks: ``resources`` (what one trial asks Ray for) and the optional
``attack_eval``, ``stages`` and ``schedule`` (absent: the feature is off), each a frozen
dataclass read from the spec by :func:`parse_spec_block` (keys typed by common.validation,
then the block's own ``validate``); a bad value is one line naming ``{block}.{key}``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Self, TypeVar

from smoothadv.common.errors import UserError
from smoothadv.common.settings import AttackKeys, SamplingKeys
from smoothadv.common.validation import check_at_least, parse_block

B = TypeVar("B")


def parse_spec_block(cls: type[B], values: Any, key: str) -> B:
    """The block ``key`` of a spec, typed and validated."""
    if not isinstance(values, Mapping):
        raise UserError(f"{key}: expected a mapping")
    return parse_block(cls, values, f"{key}.").validate()


@dataclass(frozen=True)
class Resources:
    """What one trial asks Ray for: Train workers (DDP ranks) and each worker's share."""

    workers: int = 1
    gpus_per_worker: float = 0.0  # fractions let several small trials share one GPU
    cpus_per_worker: float = 1.0
    worker_retries: int = 2  # worker-group failures retried inside the trial (Train)
    trial_retries: int = 0  # trial errors retried by Tune
    max_concurrent: int = 0  # trials at once; 0: as many as the cluster holds when it starts
    start_timeout_s: float = 3600.0  # how long a trial's workers may wait for their resources
    upload_every_s: float = 120.0  # bucket storage: seconds between a trial's uploads

    def trials_that_fit(self, cpus: float, gpus: float) -> int:
        """How many trials ``cpus`` CPUs and ``gpus`` GPUs hold at once (maybe 0)."""
        fits = [cpus / (self.workers * self.cpus_per_worker)]
        if self.gpus_per_worker:
            fits.append(gpus / (self.workers * self.gpus_per_worker))
        return math.floor(min(fits) + 1e-9)

    def validate(self) -> Resources:
        check_at_least(self, "resources.", 1, "workers")
        if self.gpus_per_worker < 0 or (self.gpus_per_worker > 1
                                        and self.gpus_per_worker != int(self.gpus_per_worker)):
            raise UserError("resources.gpus_per_worker: must be a fraction in [0, 1] or a whole "
                            f"number, got {self.gpus_per_worker}")
        if self.cpus_per_worker < 0.1:
            raise UserError("resources.cpus_per_worker: must be ≥ 0.1, got "
                            f"{self.cpus_per_worker}")
        check_at_least(self, "resources.", 0, "worker_retries", "trial_retries", "max_concurrent")
        if self.start_timeout_s <= 0:
            raise UserError(f"resources.start_timeout_s: must be > 0, got {self.start_timeout_s}")
        if self.upload_every_s <= 0:
            raise UserError(f"resources.upload_every_s: must be > 0, got {self.upload_every_s}")
        return self


@dataclass(frozen=True, kw_only=True)
class AttackEval(AttackKeys):
    """The empirical attack run on each trial's final model (paper Section 4.3), on every
    ``skip``-th test image before index ``max``; ``sigma`` and ``seed`` are the trial's."""

    epsilons: tuple[float, ...] = (0.25, 0.5, 1.0)
    n: int = 1000
    skip: int = 1
    max: int = -1

    def validate(self, prefix: str = "attack_eval.") -> Self:
        super().validate(prefix)
        check_at_least(self, prefix, 1, "skip")
        return self


@dataclass(frozen=True)
class StagedCertification:
    """Staged certification (sweep.stages; issue 15): stage 1 certifies every trial on every
    ``skip``-th test image with ``n`` samples; stage 2 certifies at the trials' full ``certify``
    settings only those whose certified accuracy can still reach the envelope at some radius
    of ``radii`` (empty: every 0.25 up to the largest radius the trials' full n certifies, or
    their ``certify.target_radius``), with risk ``alpha`` per bound; stage 3 re-certifies the
    envelope's winners on every ``final_skip``-th image (1: the whole test set)."""

    n: int = 1000
    skip: int = 100
    radii: tuple[float, ...] = ()
    alpha: float = 0.001
    final_skip: int = 1

    def validate(self, prefix: str = "stages.") -> StagedCertification:
        SamplingKeys(n=self.n, alpha=self.alpha).validate(prefix)
        check_at_least(self, prefix, 1, "skip", "final_skip")
        if any(r < 0 for r in self.radii):
            raise UserError(f"{prefix}radii: must be ≥ 0, got {list(self.radii)}")
        return self

    def record(self) -> dict[str, Any]:
        return {**asdict(self), "radii": list(self.radii)}


@dataclass(frozen=True)
class EarlyStopping:
    """Early stopping (sweep.early_stopping; issue 15 part 3): after each rung epoch (a fraction of
    ``rungs`` of the trial's epochs) a trial certifies its current model on a proxy of about
    ``images`` test images (every k-th, k = max(1, test images // images)) with ``n0``/``n``
    samples at risk ``alpha``, and reports its certified accuracy at ``radii`` (empty: every
    0.25 up to what ``n`` certifies at its σ, or the trials' ``certify.target_radius`` when
    smaller); it is stopped when, once ``min_trials`` trials of its σ reported the rung, the
    others' envelope beats it by more than ``margin`` at every radius.

    The defaults (``images`` 500, ``margin`` 0.1) are chosen by benchmarks/early_stop_replay.py
    on a real 440-trial CIFAR-10 grid: 1.32× of the training cost saved, and the envelope at
    r = 0 … 2.25 never more than 1 point lower in 200 draws when each trial's rung model is
    mildly worse than its final one, where 100 images and margin 0.05 lost more than 1 point in
    61 % of draws (docs/benchmarks.md, "Early stopping at the paper's scale")."""

    rungs: tuple[float, ...] = (0.34, 0.67)
    images: int = 500
    n0: int = 32
    n: int = 500
    alpha: float = 0.001
    margin: float = 0.1
    radii: tuple[float, ...] = ()
    min_trials: int = 3

    def validate(self, prefix: str = "schedule.") -> EarlyStopping:
        if not self.rungs:
            raise UserError(f"{prefix}rungs: give at least one fraction of the epochs")
        if not all(0 < f < 1 for f in self.rungs):
            raise UserError(f"{prefix}rungs: each must lie in (0, 1), got {list(self.rungs)}")
        check_at_least(self, prefix, 1, "images")
        SamplingKeys(n0=self.n0, n=self.n, alpha=self.alpha).validate(prefix)
        if not 0 <= self.margin < 1:
            raise UserError(f"{prefix}margin: must be ≥ 0 and < 1, got {self.margin}")
        if any(r < 0 for r in self.radii):
            raise UserError(f"{prefix}radii: must be ≥ 0, got {list(self.radii)}")
        if self.min_trials < 2:
            raise UserError(f"{prefix}min_trials: must be ≥ 2 (a trial is judged against "
                            f"others of its σ), got {self.min_trials}")
        return self

    def record(self) -> dict[str, Any]:
        return {**asdict(self), "rungs": list(self.rungs), "radii": list(self.radii)}

    def rung_epochs(self, epochs: int) -> dict[int, int]:
        """Epochs trained after which a proxy is certified → their rung (1, 2, …): each
        max(1, round(f·epochs)) (halves up), duplicates and the last epoch dropped."""
        ends = sorted({max(1, math.floor(f * epochs + 0.5)) for f in self.rungs} - {epochs})
        return {e: i + 1 for i, e in enumerate(e for e in ends if e < epochs)}

    def proxy_skip(self, num_images: int) -> int:
        """Every k-th test image makes the proxy: about ``images`` of ``num_images``."""
        return max(1, num_images // self.images)

    def radii_for(self, sigma: float, target_radius: float | None = None) -> list[float]:
        """Where a trial of noise level ``sigma`` reports its proxy: ``radii``, else
        common.stage_selection.default_radii at the proxy's n (radii no proxy certifies would keep
        every trial)."""
        if self.radii:
            return sorted(self.radii)
        from smoothadv.common.stage_selection import (
            default_radii,  # scipy: off the sweep driver's import path
        )

        return default_radii(sigma, self.n, self.alpha, target_radius)
