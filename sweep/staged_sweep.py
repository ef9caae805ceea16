"""A staged sweep's progress (issue 15 part 1): which stage runs, which trials take part, and
the record of where each trial stopped and why, in ``stages.json`` (common.layout.STAGES).

Stage 1 trains every trial and certifies it cheaply (sweep.spec_blocks.StagedCertification); stage
2 certifies at full n the trials that can still reach the envelope
(common.stage_selection.reachable_trials); stage 3 re-certifies the envelope's winners on the finer
image grid (common.stage_selection.winners). Each stage is a Tune experiment of its own (``tune/``,
``tune-stage2/``, ``tune-stage3/``), so a sweep resumes inside whichever stage it was stopped in.
The decisions read files only. A trial the sweep's ``schedule`` stopped while training
(sweep.early_stopping, schedule.json) has no stage-1 certification: it stays at stage 1 with the
scheduler's reason.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
from smoothadv.common import layout, stages_file
from smoothadv.common.schedule_file import stopped_trials
from smoothadv.sweep.grid import Trial
from smoothadv.sweep.spec import SweepSpec
from smoothadv.sweep.storage import SweepFolder


def tune_name(stage: int) -> str:
    """The folder of a stage's Tune experiment (stage 0, an unstaged sweep, and 1: ``tune``)."""
    return layout.TUNE if stage <= 1 else f"{layout.TUNE}-stage{stage}"


def read(sweep: SweepFolder) -> dict[str, Any] | None:
    """The sweep's stages.json (None: not staged, or stage 1 not yet begun)."""
    return stages_file.read(sweep.local)


def begin(sweep: SweepFolder, stage: int, trials: dict[str, dict[str, Any]]) -> None:
    """Record that ``stage`` runs, with each trial's reached stage and reason."""
    sweep.write_json(sweep.local / layout.STAGES, {"stage": stage, "trials": trials})


def radii(spec: SweepSpec, trials: list[Trial]) -> list[float]:
    """Where the stages judge the trials: the spec's ``stages.radii``, else
    common.stage_selection.default_radii at full n and the largest σ, up to
    ``certify.target_radius``."""
    from smoothadv.common.stage_selection import (
        default_radii,  # scipy: not on the sweep driver's import path
    )

    if spec.stages.radii:
        return sorted(spec.stages.radii)
    c = trials[0].config.certify
    return default_radii(max(t.config.sigma for t in trials), c.n, c.alpha, c.target_radius)


def _rows(sweep: SweepFolder, trials: list[Trial], name: str) -> dict[str, pd.DataFrame]:
    sweep.pull(under=layout.TRIALS, only=(name,))
    return {t.name: pd.read_csv(layout.trial_dir(sweep.local, t.name) / name, sep="\t")
            for t in trials}


def next_stage(sweep: SweepFolder, spec: SweepSpec, done: int) -> tuple[int, list[Trial]]:
    """After stage ``done`` finished without errors: record the next stage's trials and their
    reasons in stages.json and return (next stage, its trials); (0, []) when none is left."""
    from smoothadv.common.stage_selection import REACHABLE, reachable_trials, winners

    trials = spec.trials()
    record = read(sweep) or {"trials": {}}
    reached = record["trials"]
    at = [t for t in trials if reached.get(t.name, {}).get("stage") == done]
    sigma_of = {t.name: t.config.sigma for t in trials}
    where = radii(spec, trials)
    if done == 1:
        halted = stopped_trials(sweep.local)  # stopped early by the schedule: no stage-1 file
        why = {t.name: halted[t.name] for t in at if t.name in halted}
        at = [t for t in at if t.name not in halted]
        c, stages = trials[0].config.certify, spec.stages
        verdict = reachable_trials(_rows(sweep, at, layout.CERTIFY_STAGE1), sigma_of, where,
                                   stages.alpha, c.n, c.alpha, stage1_n=stages.n,
                                   stage1_alpha=c.alpha, full_n0=c.n0) if at else {}
        going = [t for t in at if verdict[t.name] == REACHABLE]
        why.update({t.name: verdict[t.name] for t in at if verdict[t.name] != REACHABLE})
    elif done == 2 and spec.stages.final_skip != trials[0].config.certify.skip:
        chosen = set(winners(_rows(sweep, at, layout.CERTIFY), sigma_of, where))
        going = [t for t in at if t.name in chosen]
        why = {t.name: "not on the envelope at full n" for t in at if t.name not in chosen}
    else:
        going, why = [], {}
    for name, reason in why.items():
        reached[name] = {"stage": done, "why": reason}
    if not going:
        begin(sweep, stages_file.DONE, reached)
        return 0, []
    for t in going:
        reached[t.name] = {"stage": done + 1, "why": ""}
    begin(sweep, done + 1, reached)
    return done + 1, going


def current(sweep: SweepFolder, spec: SweepSpec) -> tuple[int, list[Trial]]:
    """The stage a staged sweep was in and its trials (stage > stages_file.LAST: all done)."""
    record = read(sweep)
    if record is None:
        return 1, spec.trials()
    stage = record["stage"]
    return stage, [t for t in spec.trials()
                   if record["trials"].get(t.name, {}).get("stage") == stage]


def summary(sweep: SweepFolder) -> str:
    """One line: how many trials stopped at each stage and how many went through the last."""
    record = read(sweep) or {"trials": {}}
    return f"{sweep.where}: staged certification: {stages_file.outcome(record['trials'])}"
