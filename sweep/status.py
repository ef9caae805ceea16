"""``sweep plan`` and ``sweep status``: tables read from the spec and the sweep folder only
(no Ray started, so both answer in well under a second)."""

from __future__ import annotations

import os
import socket
import time
from collections import Counter
from pathlib import Path

import pandas as pd
from smoothadv.common import layout
from smoothadv.common.errors import UserError
from smoothadv.common.records import read_driver, read_metrics, read_plan, read_state
from smoothadv.common.stages_file import LAST, outcome, stopped_counts, trials
from smoothadv.common.stages_file import read as read_stage_record
from smoothadv.sweep import processes
from smoothadv.sweep.spec import SweepSpec, parse_spec
from smoothadv.sweep.spec_record import read_spec_values
from smoothadv.sweep.storage import SweepFolder
from smoothadv.sweep.trial_states import reconciled, tune_statuses, will_run


def plan_table(spec: SweepSpec) -> pd.DataFrame:
    """One row per trial: name, gridded values, epochs and what it requests from Ray."""
    res = spec.resources
    trials = spec.trials()
    gridded = list(dict.fromkeys(k for t in trials for k in t.params))
    rows = [{"trial": t.name, **{k: t.params.get(k, "") for k in gridded},
             "epochs": t.config.epochs, "workers": res.workers,
             "gpus": res.workers * res.gpus_per_worker, "cpus": res.workers * res.cpus_per_worker}
            for t in trials]
    return pd.DataFrame(rows, dtype=object)


def local_gpus() -> int:
    """GPUs the embedded local Ray would find here, counted without torch or Ray: the entries
    of CUDA_VISIBLE_DEVICES when set, else the /dev/nvidiaN devices."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    return len([d for d in Path("/dev").glob("nvidia*") if d.name[6:].isdigit()])


def concurrency_line(spec: SweepSpec) -> str:
    """How many trials `sweep run` will run at once (run.concurrency, as seen before Ray)."""
    res = spec.resources
    if res.max_concurrent:
        return f"at most {res.max_concurrent} trials at once (resources.max_concurrent)"
    cpus, gpus = os.cpu_count() or 1, local_gpus()
    fits = res.trials_that_fit(cpus, gpus)
    here = (f"at most {fits} trials at once" if fits else "no trial fits") + (
        f" on this machine's local Ray ({cpus} CPUs, {gpus} GPUs)")
    return (f"{here}; on a cluster as many as it holds when the sweep starts (give a ceiling "
            "with --max-concurrent or resources.max_concurrent when it autoscales)")


def format_presets() -> str:
    """Each shipped preset: a line with its name and trial count, then its whole description
    (:func:`preset_description`) indented by four spaces; a blank line between presets."""
    from smoothadv.sweep.spec import PRESETS, load_spec, preset_names

    blocks = []
    for name in preset_names():
        text = (PRESETS / f"{name}.yaml").read_text(encoding="utf-8")
        try:
            count = f"{len(load_spec(name).trials())} trials"
        except UserError as e:  # fine-tuning needs its pre-training sweep named
            count = ("needs --set init_from_sweep=DIR" if "init_from_sweep" in str(e)
                     else "see `smoothadv sweep plan`")
        blocks.append("\n".join([f"{name:20} {count}",
                                 *(f"    {line}".rstrip() for line in preset_description(text))]))
    return "\n\n".join(blocks)


def preset_description(text: str) -> list[str]:
    """The comment block a spec's text opens with, each line without its "#" and the one space
    after it (deeper indentation, as of an example command, kept)."""
    lines = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        lines.append(line[2:] if line.startswith("# ") else line[1:])
    return lines


def plan_summary(spec: SweepSpec, table: pd.DataFrame) -> list[str]:
    """What ``sweep plan`` prints first: what each trial requests and all at once, the cost in
    trial-epochs, how many run at once, and last the number of trials."""
    res = spec.resources
    epochs = table["epochs"].sum()
    return [f"each trial: {res.workers} worker(s) × ({res.gpus_per_worker:g} GPU, "
            f"{res.cpus_per_worker:g} CPU); all trials at once would need "
            f"{table['gpus'].sum():g} GPUs and {table['cpus'].sum():g} CPUs",
            f"{epochs} trial-epochs in all: GPU-hours ≈ {epochs} × (hours per epoch of one "
            f"trial) × {res.workers * res.gpus_per_worker:g} GPUs per trial, plus "
            "certification" + (", at most: early stopping (schedule) may stop trials at their "
                               "rungs" if spec.schedule else ""),
            concurrency_line(spec),
            f"{len(table)} trials"]


def format_plan(spec: SweepSpec, summary_only: bool = False) -> str:
    """``sweep plan``: the summary (:func:`plan_summary`), then, unless ``summary_only``, a
    blank line and the table of trials (:func:`plan_table`)."""
    table = plan_table(spec)
    lines = plan_summary(spec, table)
    if not summary_only:
        lines += ["", table.to_string(index=False)]
    return "\n".join(lines)


def _count_rows(path: Path) -> int:
    try:
        with open(path, "rb") as f:
            return max(sum(1 for line in f if line.endswith(b"\n")) - 1, 0)
    except FileNotFoundError:
        return 0


def certify_files(tdir: Path, name: str = layout.CERTIFY) -> list[Path]:
    """The files holding a trial's rows of ``name``: the merged file when it exists, else the
    shares a multi-worker trial's ranks write (``certify.part<r>of<w>.tsv``) before merging."""
    merged = tdir / name
    if merged.is_file():
        return [merged]
    stem, _, ext = name.partition(".")
    return sorted(p for p in tdir.glob(f"{stem}.part*of*.{ext}")
                  if p.is_file() and layout.shard_rank(p.name) is not None)


def parse_durations(values) -> pd.Series:
    """Seconds of each ``time`` value (``str(datetime.timedelta)``, e.g. "0:00:01.234567");
    NaN where a value does not parse."""
    return pd.to_timedelta(pd.Series(list(values), dtype=object), errors="coerce") \
        .dt.total_seconds()


def _timed_rows(path: Path) -> tuple[int, float]:
    """The complete rows of a results file whose ``time`` parses, and the sum of those
    durations in seconds (only that column is parsed)."""
    try:
        lines = path.read_bytes().split(b"\n")[:-1]  # the last piece: a torn line or b""
    except FileNotFoundError:
        return 0, 0.0
    if len(lines) < 2:
        return 0, 0.0
    header = lines[0].decode(errors="replace").split("\t")
    if "time" not in header:
        return 0, 0.0
    col = header.index("time")
    times = [fields[col].decode(errors="replace") if len(fields) > col else ""
             for fields in (line.split(b"\t") for line in lines[1:])]
    seconds = parse_durations(times).dropna()
    return len(seconds), float(seconds.sum())


def certify_rate(files: list[Path]) -> float:
    """Images per second across a trial's workers: per file (one rank each), its rows over the
    sum of their durations, summed over the files. 0.0 when no duration is known."""
    rate = 0.0
    for path in files:
        rows, seconds = _timed_rows(path)
        if rows and seconds > 0:
            rate += rows / seconds
    return rate


def format_rate(per_second: float) -> str:
    """Images per minute ("12.3/min"), or per hour ("0.5/h") when under one a minute."""
    per_minute = per_second * 60
    return f"{per_minute:.1f}/min" if per_minute >= 1 else f"{per_minute * 60:.1f}/h"


def format_eta(seconds: float) -> str:
    """A remaining time as "3h12m", "45m" or "<1m"."""
    if seconds < 60:
        return "<1m"
    hours, minutes = divmod(round(seconds / 60), 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m"


def _stage_line(current, reached: dict[str, int | None], why: dict[str, str]) -> str:
    """"stage 2 of 3: 5 trials reached stage 2, 2 trials stopped at stage 1" from stages.json
    (common.stages_file's wording once every stage is done)."""
    entries = {name: {"stage": s, "why": why.get(name, "")} for name, s in reached.items()}
    if not isinstance(current, int):
        return f"stage ? of {LAST}"
    if current > LAST:
        return "every stage done: " + outcome(entries)
    parts = [f"{trials(sum(1 for s in reached.values() if isinstance(s, int) and s >= current))}"
             f" reached stage {current}", *stopped_counts(entries)]
    behind = sum(1 for name, s in reached.items() if not why.get(name)
                 and not (isinstance(s, int) and s >= current))
    if behind:
        parts.append(f"{trials(behind)} not yet at stage {current}")
    return f"stage {current} of {LAST}: " + ", ".join(parts)


def _last_epoch(path: Path) -> int | None:
    """Epochs done, from the trial's metrics.jsonl (None: none yet; common.records)."""
    epochs = read_metrics(path)
    return epochs[-1]["epoch"] + 1 if epochs else None


def read_sweep_spec(folder: str | Path) -> SweepSpec:
    """The spec of the sweep folder ``folder`` (its ``sweep.yaml``: sweep.spec_record, a spec
    sweep.spec accepts; anything else is one UserError line naming the file); a folder without
    one is not a sweep folder."""
    path = Path(folder) / layout.SPEC
    if not path.is_file():
        raise UserError(f"{folder}: not a sweep folder (no {layout.SPEC}); "
                        "give the folder `smoothadv sweep run` printed")
    return _spec_of(lambda: read_spec_values(path), path)


def _spec_of(load, where: str | Path) -> SweepSpec:
    try:
        return parse_spec(load())
    except UserError as e:
        message = str(e)
        raise UserError(message if message.startswith(f"{where}:") else f"{where}: {message}"
                        ) from None


HEARTBEAT_S = 30.0  # how often a running driver rewrites its driver.json
STALE_S = 3 * HEARTBEAT_S  # a driver whose heartbeat is older is gone (its machine replaced)


def heartbeat_age(info: dict) -> float | None:
    """Seconds since the driver's last heartbeat (None in a record written without one)."""
    beat = info.get("heartbeat")
    return None if not isinstance(beat, int | float) else max(0.0, time.time() - beat)


def driver_alive(sweep_dir: Path) -> bool:
    """Whether the sweep's driver still runs: on this host its process is looked up; a driver
    on another host (a head node or pod since replaced) is alive while its heartbeat is fresh."""
    info = read_driver(sweep_dir / layout.DRIVER)
    if info is None:
        return False
    if info.get("host") != socket.gethostname():
        age = heartbeat_age(info)
        return age is None or age < STALE_S  # no heartbeat recorded: trust the record
    try:
        pid, start = int(info["pid"]), int(info["start"])
    except (KeyError, TypeError, ValueError):
        return False
    # by pid and start time: a killed driver not yet reaped by its parent (a zombie) is dead,
    # and so is another process that took its pid since
    return processes.alive((pid, start))


def status_table(sweep_dir: str | Path | SweepFolder) -> tuple[pd.DataFrame, SweepSpec]:
    """One row per trial: its state (state.json reconciled with the driver's liveness and
    Tune's record: sweep.trial_states), stage, epochs, certified images, rate, ETA, why it
    stopped and its error."""
    sweep = sweep_dir if isinstance(sweep_dir, SweepFolder) else SweepFolder(Path(sweep_dir))
    folder = sweep.local
    spec = read_sweep_spec(folder)
    alive = driver_alive(folder)
    stages = read_stage_record(folder)
    tune = {} if alive else tune_statuses(sweep, _tune_name(stages))
    rows = []
    for trial in spec.trials():
        tdir = layout.trial_dir(folder, trial.name)
        state = read_state(tdir / layout.STATE) or {}
        status = reconciled(state.get("state"), tune.get(trial.name), alive)
        files = certify_files(tdir, layout.CERTIFY)
        plan_name = layout.CERTIFY_PLAN
        if stages is not None and not files:  # stage 1: the screening certification
            files = certify_files(tdir, layout.CERTIFY_STAGE1)
            plan_name = layout.CERTIFY_STAGE1_PLAN
        planned = read_plan(tdir / plan_name)
        done = sum(_count_rows(f) for f in files)
        rate = eta = ""
        if status == "RUNNING" and done and planned is not None:
            per_second = certify_rate(files)
            if per_second > 0:
                rate = format_rate(per_second)
                eta = format_eta(max(planned - done, 0) / per_second)
        epoch = _last_epoch(tdir / layout.METRICS)
        row = {"trial": trial.name, "state": status}
        entry = {} if stages is None else stages["trials"].get(trial.name, {})
        if stages is not None:
            row["stage"] = "" if entry.get("stage") is None else str(entry["stage"])
        row.update({
            "epoch": f"{epoch or 0}/{trial.config.epochs}",
            "certified": f"{done}/{planned}" if planned is not None else f"{done}/?",
            "rate": rate, "eta": eta,
        })
        # why a trial stopped: its stage (a staged sweep), else the early-stopping schedule's
        row["why"] = str(entry.get("why") or "") if stages is not None else state.get("why", "")
        row["error"] = state.get("error", "") if status == "ERROR" else ""
        rows.append(row)
    return pd.DataFrame(rows), spec


def _tune_name(stages) -> str:
    """The Tune experiment of the stage a sweep is in."""
    from smoothadv.sweep.staged_sweep import tune_name

    stage = stages.get("stage") if stages else 0
    return tune_name(stage if isinstance(stage, int) else 0)


def format_status(sweep_dir: str | Path | SweepFolder) -> str:
    """The status table, a staged sweep's stage line, what a resume would run (when no driver
    runs) and, last, the count of trials in each state."""
    table, _ = status_table(sweep_dir)
    folder = sweep_dir.local if isinstance(sweep_dir, SweepFolder) else Path(sweep_dir)
    counts = Counter(table["state"])
    summary = ", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items()))
    hidden = [c for c in ("why", "error") if c in table and not table[c].astype(bool).any()]
    lines = [table.drop(columns=hidden).to_string(index=False)]
    if not driver_alive(folder):
        lines.append(_resume_line(dict(zip(table["trial"], table["state"], strict=True))))
    stages = read_stage_record(folder)
    if stages is not None:  # before the last line, which stays the trials' summary
        entries = stages["trials"]
        lines.append(_stage_line(
            stages["stage"], {t: entries.get(t, {}).get("stage") for t in table["trial"]},
            {t: str(entries.get(t, {}).get("why") or "") for t in table["trial"]}))
    return "\n".join([*lines, f"{len(table)} trials: {summary}"])


def _resume_line(states: dict[str, str]) -> str:
    """What `sweep resume` would run, from the reconciled states."""
    left = will_run(states)
    if not left:
        return "every trial finished: `sweep resume` has nothing to run"
    errored = sum(states[t] == "ERROR" for t in left)
    shown = ", ".join(left[:8]) + (f", … ({len(left) - 8} more)" if len(left) > 8 else "")
    return (f"`sweep resume` runs {trials(len(left))}: {shown}"
            + (f" ({errored} errored: from their checkpoints; --restart-errored restarts "
               "them from scratch)" if errored else ""))
