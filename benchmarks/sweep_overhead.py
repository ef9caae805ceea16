"""What Ray costs per trial: the same small trials run through ``smoothadv sweep run`` (one at a
time) and directly in this process one after another (train, then certify).

Prints both wall times, their ratio and the per-trial overhead in seconds.

    .venv/bin/python benchmarks/sweep_overhead.py [--trials 3] [--epochs 1]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml
from smoothadv.sweep.spec import parse_spec
from smoothadv.sweep.trial_worker import certify_trial
from smoothadv.trainers.train import train_trial


def spec_values(trials: int, epochs: int) -> dict:
    return {
        "name": "overhead",
        "defaults": {"dataset": "synthetic", "arch": "lenet", "train_subset": 1024,
                     "epoch_test_subset": 256, "epochs": epochs, "batch_size": 64, "lr": 0.05,
                     "steps": 2, "m_train": 2, "epsilon": 0.25, "warmup_epochs": 1,
                     "device": "cpu",
                     "certify": {"n0": 32, "n": 500, "batch_size": 500, "skip": 32}},
        "resources": {"workers": 1, "cpus_per_worker": 1},
        "grid": {"seed": list(range(trials))},
    }


def run_direct(values: dict, root: Path) -> float:
    torch.set_num_threads(1)  # as inside a 1-CPU Ray worker
    t0 = time.perf_counter()
    for trial in parse_spec(values).trials():
        folder = root / trial.name
        train_trial(trial.config, folder, progress=False)
        certify_trial(trial.config, folder, 0, 1, torch.device("cpu"))
    return time.perf_counter() - t0


def run_sweep(values: dict, root: Path) -> float:
    spec = root / "spec.yaml"
    spec.write_text(yaml.safe_dump(values))
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "smoothadv.cli.main",
                    "sweep", "run", str(spec), "--storage",
                    str(root / "sweeps"), "--max-concurrent", "1", "--verbose", "0"],
                   check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()
    values = spec_values(args.trials, args.epochs)
    with tempfile.TemporaryDirectory() as d:
        direct = run_direct(values, Path(d) / "direct")
        swept = run_sweep(values, Path(d))
    print(f"{args.trials} trials, one at a time: in-process {direct:.1f} s, "
          f"smoothadv sweep run {swept:.1f} s")
    print(f"ratio sweep/in-process: {swept / direct:.2f}; "
          f"overhead per trial: {(swept - direct) / args.trials:.1f} s")


if __name__ == "__main__":
    main()
