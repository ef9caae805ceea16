"""``sweep plan`` and ``sweep status``: tables read from the spec and the sweep folder only
(no Ray started, so both answer in well under a second)."""

from __future__ import annotations

import json
import os
import socket
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import yaml

from common import layout
from common.errors import UserError
from sweep.spec import SweepSpec, parse_spec


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
    """One line per shipped preset: its name, trial count and the first line of its comment."""
    from sweep.spec import PRESETS, load_spec, preset_names

    lines = []
    for name in preset_names():
        first = (PRESETS / f"{name}.yaml").read_text(encoding="utf-8").splitlines()[0]
        try:
            count = f"{len(load_spec(name).trials())} trials"
        except UserError as e:  # fine-tuning needs its pre-training sweep named
            count = ("needs --set init_from_sweep=DIR" if "init_from_sweep" in str(e)
                     else "see `smoothadv sweep plan`")
        lines.append(f"{name:20} {count:32} {first.lstrip('# ')}")
    return "\n".join(lines)


def format_plan(spec: SweepSpec) -> str:
    table = plan_table(spec)
    total_gpus = table["gpus"].sum()
    epochs = table["epochs"].sum()
    lines = [table.to_string(index=False), "",
             f"each trial: {spec.resources.workers} worker(s) × "
             f"({spec.resources.gpus_per_worker:g} GPU, {spec.resources.cpus_per_worker:g} CPU); "
             f"all trials at once would need {total_gpus:g} GPUs and {table['cpus'].sum():g} CPUs",
             f"{epochs} trial-epochs in all: GPU-hours ≈ {epochs} × (hours per epoch of one "
             f"trial) × {spec.resources.workers * spec.resources.gpus_per_worker:g} GPUs per "
             "trial, plus certification",
             concurrency_line(spec),
             f"{len(table)} trials"]
    return "\n".join(lines)


def _count_rows(path: Path) -> int:
    try:
        with open(path, "rb") as f:
            return max(sum(1 for line in f if line.endswith(b"\n")) - 1, 0)
    except FileNotFoundError:
        return 0


def _last_epoch(path: Path) -> int | None:
    try:
        lines = [ln for ln in path.read_text().splitlines() if ln.endswith("}")]
    except FileNotFoundError:
        return None
    return json.loads(lines[-1])["epoch"] + 1 if lines else None


HEARTBEAT_S = 30.0  # how often a running driver rewrites its driver.json
STALE_S = 3 * HEARTBEAT_S  # a driver whose heartbeat is older is gone (its machine replaced)


def heartbeat_age(info: dict) -> float | None:
    """Seconds since the driver's last heartbeat (None in a record written without one)."""
    beat = info.get("heartbeat")
    return None if not isinstance(beat, int | float) else max(0.0, time.time() - beat)


def driver_alive(sweep_dir: Path) -> bool:
    """Whether the sweep's driver still runs: on this host its process is looked up; a driver
    on another host (a head node or pod since replaced) is alive while its heartbeat is fresh."""
    info = layout.read_json(sweep_dir / layout.DRIVER)
    if info is None:
        return False
    if info.get("host") != socket.gethostname():
        age = heartbeat_age(info)
        return age is None or age < STALE_S  # no heartbeat recorded: trust the record
    try:
        os.kill(int(info["pid"]), 0)
    except (ProcessLookupError, ValueError, KeyError):
        return False
    except PermissionError:
        return True
    return True


def status_table(sweep_dir: str | Path) -> tuple[pd.DataFrame, SweepSpec]:
    folder = Path(sweep_dir)
    if not (folder / layout.SPEC).is_file():
        raise UserError(f"{folder}: not a sweep folder (no {layout.SPEC}); "
                        "give the folder `smoothadv sweep run` printed")
    spec = parse_spec(yaml.safe_load((folder / layout.SPEC).read_text()))
    alive = driver_alive(folder)
    rows = []
    for trial in spec.trials():
        tdir = layout.trial_dir(folder, trial.name)
        state = layout.read_json(tdir / layout.STATE) or {}
        status = state.get("state", "PENDING")
        if status == "RUNNING" and not alive:
            status = "INTERRUPTED"
        plan = layout.read_json(tdir / layout.CERTIFY_PLAN) or {}
        done = _count_rows(tdir / layout.CERTIFY)
        epoch = _last_epoch(tdir / layout.METRICS)
        rows.append({
            "trial": trial.name, "state": status,
            "epoch": f"{epoch or 0}/{trial.config.epochs}",
            "certified": f"{done}/{plan['planned']}" if "planned" in plan else f"{done}/?",
            "error": state.get("error", ""),
        })
    return pd.DataFrame(rows), spec


def format_status(sweep_dir: str | Path) -> str:
    table, _ = status_table(sweep_dir)
    counts = Counter(table["state"])
    summary = ", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items()))
    shown = table if table["error"].astype(bool).any() else table.drop(columns="error")
    return "\n".join([shown.to_string(index=False), f"{len(table)} trials: {summary}"])
