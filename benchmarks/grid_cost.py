"""What the economical defaults save on a real grid, and what they cost the envelope (issue 15).

One grid (Fashion-MNIST, LeNet, CPU; σ ∈ {0.25, 0.5} × SmoothAdv-PGD/-DDN × m_train ∈ {1, 2} ×
ε ∈ {0.25, 0.5, 1.0}, plus the Gaussian baseline per σ: 26 trials) is run twice through
``smoothadv sweep run`` on the embedded local Ray, as a user runs it:

- exhaustive: every trial certified at full n on the planned images, as Cohen et al. (CERTIFY,
  ``certify.sequential: false``);
- economical: the presets' economical defaults: sequential certification (``target_radius``
  1.0, the largest radius compared below) and the envelope-aware early stopping of training (a
  ``schedule:`` block, its proxy scaled to this grid); ``--no-schedule`` leaves the latter out.
  ``--stages`` adds staged certification (stage 1: every 5th planned image at n/10; stage 2 at
  full n for the trials that can still reach the envelope), which did not pay here (issue 15's
  note) and so is off in the presets. Stage 3 (winners on a finer image grid) is left out: it
  spends more to report more precisely, and would make the two envelopes incomparable
  (measured on other images).

It prints each run's compute — trial-epochs trained, noisy forward passes of certification
(rows' ``samples``, else n0 + n, over every certification file) and the seconds spent (wall
clock of the whole sweep; training and certification seconds summed over trials) — with the
economical/exhaustive ratios, and both envelopes (plain max and held-out selection) at radii
0, 0.25, …, 1 with their largest difference (target: ≥ 3× less compute, envelope within 1
point). Everything lives in ``--out``; a re-run resumes both sweeps. ``--quick`` is a smaller
grid in its own sub-folder.

    .venv/bin/python benchmarks/grid_cost.py [--out DIR] [--quick] [--no-schedule] [--stages]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from smoothadv.analysis.curves import envelope
from smoothadv.analysis.gather import gather
from smoothadv.common import layout

RADII = (0.0, 0.25, 0.5, 0.75, 1.0)
TARGET_RATIO, TARGET_POINTS = 3.0, 0.01
BIN = Path(sys.executable).parent


def grid(quick: bool) -> list[dict]:
    """The grid: Gaussian per σ, SmoothAdv over attack × m_train × ε × σ."""
    epsilons = [0.5] if quick else [0.25, 0.5, 1.0]
    return [{"method": ["gaussian"], "sigma": [0.25, 0.5]},
            {"attack": ["pgd", "ddn"], "m_train": [1, 2], "epsilon": epsilons,
             "sigma": [0.25, 0.5]}]


def spec(name: str, quick: bool, economical: bool, schedule: bool, stages: bool) -> dict:
    n = 400 if quick else 1000
    certify = {"n0": 100, "n": n, "alpha": 0.001, "batch_size": 500,
               "skip": 100 if quick else 50}  # 100 or 200 of the 10,000 test images
    values = {
        "name": name,
        "defaults": {"dataset": "fashion_mnist", "arch": "lenet",
                     "train_subset": 2000 if quick else 4000, "epoch_test_subset": 500,
                     "epochs": 2 if quick else 3, "batch_size": 128, "lr": 0.05,
                     "lr_step": 2, "warmup_epochs": 1, "steps": 2,
                     "device": "cpu",
                     "certify": {**certify, "sequential": False}},
        "resources": {"workers": 1, "cpus_per_worker": 1},
        "grid": grid(quick),
    }
    if economical:
        values["defaults"]["certify"] = {**certify, "sequential": True, "target_radius": 1.0}
        if stages:
            values["stages"] = {"n": n // 10, "skip": certify["skip"] * 5,
                                "radii": list(RADII), "final_skip": certify["skip"]}
        if schedule:
            # The proxy is scaled like stage 1 (a quarter of the planned images, n/10), so
            # that it stays small next to the final certification, as at the paper's scale.
            values["schedule"] = {"rungs": [0.34, 0.67], "margin": 0.05, "n0": 32,
                                  "n": n // 10, "images": 10_000 // certify["skip"] // 4}
    return values


def run(out: Path, values: dict) -> float:
    """``smoothadv sweep run`` (or ``resume`` when the sweep exists); its wall-clock seconds."""
    sweep_dir = out / values["name"]
    path = out / f"{values['name']}.yaml"
    path.write_text(yaml.safe_dump(values, sort_keys=False))
    command = (["sweep", "resume", str(sweep_dir)] if (sweep_dir / layout.TUNE).exists()
               else ["sweep", "run", str(path), "--storage", str(out)])
    t0 = time.perf_counter()
    done = subprocess.run([str(BIN / "smoothadv"), *command, "--verbose", "0"])
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        sys.exit(f"{values['name']}: `smoothadv {' '.join(command)}` exited {done.returncode}")
    clock = sweep_dir / "wall_seconds.json"
    before = json.loads(clock.read_text())["seconds"] if clock.exists() else 0.0
    clock.write_text(json.dumps({"seconds": before + seconds}))
    return before + seconds


def _seconds(times: pd.Series) -> float:
    return float(pd.to_timedelta(times).dt.total_seconds().sum())


def compute(sweep_dir: Path, wall: float) -> dict[str, float]:
    """Trial-epochs, certification forward passes, and seconds of one sweep."""
    epochs = passes = train_s = certify_s = 0.0
    for trial in sorted((sweep_dir / layout.TRIALS).iterdir()):
        metrics = trial / layout.METRICS
        if metrics.exists():
            lines = [json.loads(x) for x in metrics.read_text().splitlines() if x.endswith("}")]
            epochs += len(lines)
            train_s += sum(m["epoch_seconds"] for m in lines)
        for tsv in trial.glob("*.tsv"):
            if tsv.name == layout.ATTACK:
                continue
            rows = pd.read_csv(tsv, sep="\t")
            meta = json.loads(layout.meta_path(tsv).read_text())
            per_row = (rows["samples"].sum() if "samples" in rows
                       else len(rows) * (meta["n0"] + meta["n"]))
            passes += float(per_row)
            certify_s += _seconds(rows["time"])
    return {"trial-epochs": epochs, "forward passes": passes, "train s": train_s,
            "certify s": certify_s, "train + certify s": train_s + certify_s, "wall s": wall}


def envelopes(sweep_dir: Path) -> pd.DataFrame:
    results = gather([sweep_dir]).results
    return pd.DataFrame({selection: envelope(results, RADII, selection)["accuracy"].to_numpy()
                         for selection in ("max", "holdout")}, index=list(RADII))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "grid_cost")
    parser.add_argument("--quick", action="store_true", help="a smaller grid (its own folder)")
    parser.add_argument("--no-schedule", action="store_true",
                        help="the economical run trains every trial in full")
    parser.add_argument("--stages", action="store_true",
                        help="the economical run also certifies in stages")
    args = parser.parse_args()
    out = args.out / ("quick" if args.quick else "full")
    out.mkdir(parents=True, exist_ok=True)
    parts = ["sequential"] + (["schedule"] if not args.no_schedule else []) + (
        ["stages"] if args.stages else [])
    names = {"exhaustive": "exhaustive", "economical": "econ-" + "-".join(parts)}
    cost, env = {}, {}
    for kind, name in names.items():
        values = spec(name, args.quick, kind == "economical", not args.no_schedule, args.stages)
        wall = run(out, values)
        cost[kind] = compute(out / name, wall)
        env[kind] = envelopes(out / name)
    trials = len(list((out / "exhaustive" / layout.TRIALS).iterdir()))
    table = pd.DataFrame(cost).assign(ratio=lambda t: t["exhaustive"] / t["economical"])
    print(f"\n{trials} trials; compute (exhaustive / economical = ratio; target ≥ "
          f"{TARGET_RATIO:g}× in forward passes and seconds):")
    print(table.to_string(float_format=lambda v: f"{v:,.1f}"))
    both = pd.concat({k: v for k, v in env.items()}, axis=1)
    print("\nenvelopes (certified accuracy) at each radius:")
    print(both.to_string(float_format=lambda v: f"{v:.3f}"))
    for selection in ("max", "holdout"):
        gap = np.abs(env["exhaustive"][selection] - env["economical"][selection]).max()
        print(f"largest envelope difference ({selection}): {gap * 100:.1f} points "
              f"(target ≤ {TARGET_POINTS * 100:g})")
    print(f"economical run: {' + '.join(parts)}")
    halted = layout.read_json(out / names["economical"] / layout.SCHEDULE) or {}
    if not args.no_schedule:
        print(f"early stopping: {len(halted.get('stopped') or {})} of {trials} trials stopped")
    if args.stages:
        stages = layout.read_json(out / names["economical"] / layout.STAGES) or {"trials": {}}
        stopped = sum(bool(t.get("why")) and "rung" not in t["why"]
                      for t in stages["trials"].values())
        print(f"staged certification: {stopped} of {trials} trials stopped after stage 1")
    return 0


if __name__ == "__main__":
    sys.exit(main())
