"""What a trial's driver hands each of its Ray Train workers (sweep.trial_driver builds it,
sweep.trial_worker runs it), importable without torch."""

from __future__ import annotations

from dataclasses import dataclass

from smoothadv.sweep.spec_blocks import AttackEval, EarlyStopping, StagedCertification
from smoothadv.trainers.config import TrialConfig


@dataclass(frozen=True)
class TrialTask:
    """What a trial's workers run, built once by its driver: the trial's config as Tune's
    record holds it (validated once, sweep.param_space.trial_from_record) and the sweep's
    validated blocks, handed to every worker as objects (``train_loop_config={"task": …}``)."""

    config: TrialConfig
    trial_dir: str  # the trial's folder (for a sweep in a bucket: the driver's copy)
    threads: int  # torch threads per worker (Ray rounds a fractional CPU share down)
    stage: int = 0  # 0: an unstaged sweep; else the stage of sweep.staged_sweep
    stages: StagedCertification | None = None
    schedule: EarlyStopping | None = None
    attack_eval: AttackEval | None = None
    trial_uri: str | None = None  # a sweep in a bucket: the trial's folder there
    trial_id: str | None = None  # …and the lineage its uploads carry (sweep.trial_sync)
    upload_every_s: float | None = None
