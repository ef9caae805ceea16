"""Load: a sweep of many tiny trials (synthetic data, seconds of compute each) through
``smoothadv sweep run`` on the embedded local Ray, a few at a time.

Checks that every trial finishes, that ``sweep status`` (polled during the run) and ``analyze``
stay fast, and that memory stays bounded: it samples the proportional set size (PSS, shared
pages split between processes) of the driver and every Ray process below it, and compares the
peak while the second half of the trials ran with the peak during the first half, and the
largest single trial driver (Tune's function trainable) against a 400 MiB target. Prints each
figure with its ratio to a bound; exits 1 if a trial did not finish. Runs as many trials at
once as the sweep's default (as many as the machine holds) unless --max-concurrent says.

    .venv/bin/python benchmarks/sweep_load.py [--trials 50] [--max-concurrent N]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml
from smoothadv.common import layout
from smoothadv.sweep.processes import descendants

STATUS_BOUND_S = 2.0  # a researcher polls status by hand: it must answer at once
ANALYZE_BOUND_S = 30.0
GROWTH_BOUND = 1.2  # second-half peak memory / first-half peak


def spec_values(trials: int) -> dict:
    return {
        "name": "load",
        "defaults": {"dataset": "synthetic", "arch": "lenet", "method": "gaussian",
                     "train_subset": 64, "epoch_test_subset": 32, "epochs": 1, "batch_size": 64,
                     "lr": 0.05, "device": "cpu",
                     "certify": {"n0": 16, "n": 100, "batch_size": 100, "skip": 64}},
        "resources": {"workers": 1, "cpus_per_worker": 1},
        "grid": {"seed": list(range(trials))},
    }


def pss_mib(pid: int) -> float:
    """PSS of ``pid`` and its descendants, in MiB (processes that vanish meanwhile count 0)."""
    total_kib = 0
    for p, _ in [(pid, 0), *descendants(pid)]:
        try:
            rollup = Path(f"/proc/{p}/smaps_rollup").read_text()
        except OSError:
            continue
        total_kib += next((int(line.split()[1]) for line in rollup.splitlines()
                           if line.startswith("Pss:")), 0)
    return total_kib / 1024


DRIVER_TARGET_MIB = 400.0  # issue 13's target for one trial driver (Tune's function trainable)


def driver_pss_mib(pid: int) -> list[float]:
    """PSS in MiB of each trial driver (``ray::ImplicitFunc`` processes) under ``pid``."""
    sizes = []
    for p, _ in descendants(pid):
        try:
            if not Path(f"/proc/{p}/cmdline").read_bytes().startswith(b"ray::ImplicitFunc"):
                continue
            rollup = Path(f"/proc/{p}/smaps_rollup").read_text()
        except OSError:
            continue
        sizes.append(next((int(line.split()[1]) for line in rollup.splitlines()
                           if line.startswith("Pss:")), 0) / 1024)
    return sizes


def finished(sweep_dir: Path) -> int:
    count = 0
    for state_file in (sweep_dir / layout.TRIALS).glob(f"*/{layout.STATE}"):
        state = layout.read_json(state_file) or {}
        count += state.get("state") == "TERMINATED"
    return count


def timed(*args: str) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "smoothadv.cli.main", *args], check=True,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--max-concurrent", type=int, default=None,
                        help="default: the sweep's own (as many as the machine holds)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        spec = root / "load.yaml"
        spec.write_text(yaml.safe_dump(spec_values(args.trials)))
        sweep_dir = root / "sweeps" / "load"
        t0 = time.perf_counter()
        flags = [] if args.max_concurrent is None else ["--max-concurrent",
                                                        str(args.max_concurrent)]
        run = subprocess.Popen([sys.executable, "-m", "smoothadv.cli.main",
                                "sweep", "run", str(spec),
                                "--storage", str(root / "sweeps"), "--verbose", "0", *flags],
                               stdout=subprocess.DEVNULL)
        samples: list[tuple[int, float]] = []  # (trials finished, PSS MiB)
        drivers: list[float] = []  # each sample's largest trial driver, PSS MiB
        status_s: list[float] = []

        def poll_status() -> None:
            while run.poll() is None:
                time.sleep(20)
                if (sweep_dir / layout.SPEC).exists() and run.poll() is None:
                    status_s.append(timed("sweep", "status", str(sweep_dir)))

        poller = threading.Thread(target=poll_status, daemon=True)
        poller.start()
        while run.poll() is None:
            samples.append((finished(sweep_dir), pss_mib(run.pid)))
            drivers.append(max(driver_pss_mib(run.pid), default=0.0))
            time.sleep(1)
        wall = time.perf_counter() - t0
        poller.join()
        done = finished(sweep_dir)
        status_s.append(timed("sweep", "status", str(sweep_dir)))
        analyze_s = timed("analyze", str(sweep_dir), "-o", str(root / "report"))
        envelope = (root / "report" / "envelope.csv").read_text().splitlines()

    half = args.trials // 2
    first = max((m for n, m in samples if n < half), default=0.0)
    second = max((m for n, m in samples if n >= half), default=0.0)
    print(f"{done}/{args.trials} trials finished in {wall:.0f} s "
          f"({wall / args.trials:.1f} s per trial, "
          f"{args.max_concurrent or 'the default number'} at a time); "
          f"sweep exit code {run.returncode}")
    print(f"peak memory (PSS, driver + Ray): {max(first, second):.0f} MiB; "
          f"first half {first:.0f} MiB, second half {second:.0f} MiB, "
          f"growth {second / first:.2f} (bound {GROWTH_BOUND})")
    print(f"largest trial driver (PSS): {max(drivers, default=0):.0f} MiB, ratio to the "
          f"{DRIVER_TARGET_MIB:.0f} MiB target {max(drivers, default=0) / DRIVER_TARGET_MIB:.2f}")
    print(f"sweep status: slowest of {len(status_s)} calls {max(status_s):.2f} s, "
          f"ratio to bound {max(status_s) / STATUS_BOUND_S:.2f}")
    print(f"analyze: {analyze_s:.1f} s, ratio to bound {analyze_s / ANALYZE_BOUND_S:.2f}; "
          f"envelope has {len(envelope) - 1} radii")
    print(json.dumps({"trials": args.trials, "finished": done, "wall_s": round(wall, 1),
                      "peak_pss_mib": round(max(first, second)),
                      "driver_pss_mib": round(max(drivers, default=0)),
                      "growth": round(second / first, 3),
                      "status_max_s": round(max(status_s), 2), "analyze_s": round(analyze_s, 1)}))
    return 0 if done == args.trials and run.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
