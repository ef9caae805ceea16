"""Several trials per GPU, measured (issue 25, item 2): trials per hour when 1, 2 or 4 trials share
one GPU.

For each architecture (default ResNet-20 and ResNet-110) and each packing k (default 1, 2, 4)
it writes a sweep spec of k identical CIFAR-sized SmoothAdv-PGD trials (m_train = 4, T = 2,
multi-noise, batch 256; they differ by seed only) with ``resources.gpus_per_worker: 1/k`` and
``cpus_per_worker``: the machine's CPUs / k, and runs it through the real CLI, ``smoothadv sweep
run SPEC --storage DIR``, on the embedded local Ray (one ``sweep run`` per k and architecture).
Then it reads each trial's ``metrics.jsonl`` and prints, per k, the trials per hour of the whole
GPU: k × 3600 / the per-trial training time, and their ratio to k = 1.

The per-trial training time is measured from the epochs' own records (``epoch_seconds``, the
training loop only; ``finished_at``), never from the sweep's wall clock, so Ray's start-up, the
trials' worker start-up, the per-epoch test accuracy and checkpoints and the final
certification do not count: each epoch is the interval [finished_at − epoch_seconds,
finished_at]; the pace of a trial is its mean epoch time over the epochs that ran while all k
trials were training (between the latest first epoch's start and the earliest last epoch's
end), leaving out each trial's first epoch (warm-up: loader workers, kernels, allocator) where
others remain; the training time is that pace × the epochs. "shared" is the fraction of a
trial's training span during which all k trials were training: well under 1 means the trials
barely overlapped (start-up staggered by more than the run), and the line says so.

The data are CIFAR-shaped and synthetic, made in each trial's process (:class:`CifarShaped`,
plugged in as the dataset ``trials_per_gpu:CifarShaped`` with this folder on PYTHONPATH), since
the GPU machine holds no CIFAR-10: a fixed bank of 1,024 random uint8 images, 50,000 long like
CIFAR-10's training set, no augmentation. The GPU's work per image is that of real CIFAR-10.

Each trial certifies one test image at n = 64 at the end (not measured), every trial must
finish (TERMINATED), else it exits 1. The sweeps' local Ray stops with the CLI; every process
the CLI started is found afterwards by a tag in its environment, and any left is reported and
ended (the run then exits 1).

    .venv/bin/python benchmarks/trials_per_gpu.py [--device cuda|cpu] [--archs A,B]
        [--packs 1,2,4] [--epochs 5] [--train-subset N] [--batch 256] [--storage DIR] [--quick]

Defaults (CUDA): ResNet-20 on 8,192 training images, ResNet-110 on 2,048, 5 epochs, batch 256:
about 3 minutes on one H100 (estimated: not yet run on a GPU), most of it the six sweeps'
Ray and worker start-ups. ``--device cpu`` shares the CPUs instead (``cpus_per_worker``:
CPUs / k, no GPU): a smoke run; ``--quick`` (ResNet-20, k = 1 and 2, 64 images, batch 32,
3 epochs, on the CPU unless ``--device`` says otherwise) takes 1-2 minutes on 2 cores, almost
all of it Ray's start-up.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import torch
import yaml
from torch.utils.data import Dataset

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DATASET = "trials_per_gpu:CifarShaped"
TAG = "SMOOTHADV_TRIALS_PER_GPU_RUN"  # in the environment of every process a sweep starts
ARCHS = ("cifar_resnet20", "cifar_resnet110")
SUBSET = {"cifar_resnet20": 8192, "cifar_resnet110": 2048}  # CUDA defaults
SHORT = {"cifar_resnet20": "ResNet-20", "cifar_resnet110": "ResNet-110", "lenet": "LeNet"}


class CifarShaped(Dataset):
    """CIFAR-10-shaped synthetic images ((3, 32, 32), 10 classes, CIFAR-10's normalization): a
    dataset factory (trainers.registry) for ``dataset: trials_per_gpu:CifarShaped``."""

    num_classes = 10
    input_shape = (3, 32, 32)
    mean = (0.4914, 0.4822, 0.4465)
    std = (0.2023, 0.1994, 0.2010)

    def __init__(self, split: str, data_root=None, download: bool = False,
                 augment: bool = True):
        gen = torch.Generator().manual_seed(0 if split == "train" else 1)
        self.bank = torch.randint(0, 256, (1024, *self.input_shape), dtype=torch.uint8,
                                  generator=gen)
        self.size = 50_000 if split == "train" else 256

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        if not 0 <= i < self.size:
            raise IndexError(i)
        return self.bank[i % len(self.bank)].float().div_(255.0), i % self.num_classes


# ---------------------------------------------------------------- trials per hour from epochs


@dataclasses.dataclass(frozen=True)
class Packing:
    """What k packed trials achieved: ``trial_seconds`` (one trial's training time at the
    packed pace), ``per_hour`` (trials per hour of the whole device) and ``concurrent`` (the
    fraction of a trial's training span during which all k were training)."""

    trials: int
    trial_seconds: float
    per_hour: float
    concurrent: float


def _intervals(rows: list[dict]) -> list[tuple[float, float]]:
    return [(r["finished_at"] - r["epoch_seconds"], r["finished_at"]) for r in rows]


def packing_result(trials: list[list[dict]]) -> Packing:
    """Trials per hour from k trials' epoch records (``epoch_seconds``, ``finished_at``; see
    the module docstring)."""
    if not trials or any(not rows for rows in trials):
        raise ValueError("every trial needs at least one epoch record")
    spans = [_intervals(rows) for rows in trials]
    start = max(s[0][0] for s in spans)  # every trial training from here …
    end = min(s[-1][1] for s in spans)  # … to here
    eps = 1e-6
    seconds = []
    for rows, span in zip(trials, spans, strict=True):
        shared = [r["epoch_seconds"] for r, (a, b) in zip(rows, span, strict=True)
                  if a >= start - eps and b <= end + eps and r is not rows[0]]
        if not shared:  # no epoch beside all the others: the trial's own steady pace
            shared = [r["epoch_seconds"] for r in rows[1:]] or [rows[0]["epoch_seconds"]]
        seconds.append(statistics.fmean(shared) * len(rows))
    trial_seconds = statistics.fmean(seconds)
    length = statistics.fmean(s[-1][1] - s[0][0] for s in spans)
    concurrent = min(1.0, max(0.0, end - start) / length) if length > 0 else 1.0
    k = len(trials)
    return Packing(k, trial_seconds, k * 3600 / trial_seconds, concurrent)


def speedup(per_hour: float, base_per_hour: float) -> float:
    """Trials per hour against those of one trial alone on the device."""
    return per_hour / base_per_hour


# ---------------------------------------------------------------- the sweeps


def available_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def sweep_spec(name: str, arch: str, k: int, args: argparse.Namespace) -> dict:
    cuda = args.device == "cuda"
    subset = args.train_subset or SUBSET.get(arch, 2048)
    return {
        "name": name,
        "defaults": {
            "dataset": DATASET, "arch": arch, "method": "smoothadv", "attack": "pgd",
            "sigma": 0.25, "epsilon": 0.5, "steps": 2, "m_train": 4, "multi_noise": True,
            "warmup_epochs": 0, "epochs": args.epochs, "train_subset": subset,
            "epoch_test_subset": min(64, args.batch), "batch_size": args.batch,
            "device": "auto" if cuda else "cpu",
            "certify": {"n0": 16, "n": 64, "batch_size": 64, "max": 1},
        },
        "resources": {"workers": 1, "gpus_per_worker": round(1 / k, 4) if cuda else 0,
                      "cpus_per_worker": round(args.cpus / k, 2), "worker_retries": 0,
                      "max_concurrent": k},
        "grid": {"seed": list(range(k))},
    }


def _tagged(tag: str) -> list[int]:
    """Living processes whose environment carries ``TAG=tag`` (those a sweep run started)."""
    needle = f"{TAG}={tag}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
                if state not in ("Z", "X"):
                    found.append(int(entry.name))
        except OSError:
            continue
    return found


def leftovers(tag: str, wait_s: float = 10.0, grace_s: float = 5.0) -> list[int]:
    """The tagged processes still alive after ``wait_s`` (Ray's own shutdown takes a moment);
    those left are this run's: SIGTERM, SIGKILL after ``grace_s``; returned."""
    deadline = time.monotonic() + wait_s
    while (found := _tagged(tag)) and time.monotonic() < deadline:
        time.sleep(0.5)
    left = found
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in left:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace_s
        while left and time.monotonic() < deadline:
            time.sleep(0.1)
            alive = set(_tagged(tag))
            left = [pid for pid in left if pid in alive]
    return found


def run_sweep(spec: dict, storage: Path, timeout_s: float) -> tuple[float, int, list[int]]:
    """``smoothadv sweep run`` on ``spec``: (wall seconds, exit status, processes it left)."""
    path = storage / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    tag = uuid.uuid4().hex
    env = {**os.environ, TAG: tag,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, "-m", "smoothadv.cli.main", "sweep", "run", str(path),
               "--storage", str(storage), "--verbose", "0"]
    t0 = time.perf_counter()
    with open(storage / f"{spec['name']}.log", "w") as log:
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            rc = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGINT)  # the CLI stops its trials and its Ray
            try:
                rc = proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                rc = proc.wait()
    return time.perf_counter() - t0, rc, leftovers(tag)


def read_trials(sweep_dir: Path) -> tuple[list[list[dict]], dict[str, str]]:
    """Each trial's epoch records and its final state."""
    from smoothadv.common import layout
    from smoothadv.common.records import read_metrics, read_state

    metrics, states = [], {}
    for folder in sorted((sweep_dir / layout.TRIALS).iterdir()):
        state = read_state(folder / layout.STATE)
        states[folder.name] = state["state"] if state else "missing"
        rows = read_metrics(folder / layout.METRICS) if (folder / layout.METRICS).exists() else []
        metrics.append(sorted(rows, key=lambda r: r["epoch"]))
    return metrics, states


# ---------------------------------------------------------------- the command line


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default=None,
                        help="cuda shares one GPU (fractional gpus_per_worker); cpu shares the "
                             "CPUs (fractional cpus_per_worker). Default: cuda where there is "
                             "one (cpu with --quick)")
    parser.add_argument("--archs", default=None, help=f"default {','.join(ARCHS)}")
    parser.add_argument("--packs", default=None, help="trials per device, default 1,2,4")
    parser.add_argument("--epochs", type=int, default=None, help="default 5")
    parser.add_argument("--train-subset", type=int, default=None,
                        help="training images per trial (default: ResNet-20 8,192, ResNet-110 "
                             "2,048)")
    parser.add_argument("--batch", type=int, default=None, help="default 256")
    parser.add_argument("--cpus", type=float, default=None,
                        help="CPUs split among the packed trials (default: this machine's)")
    parser.add_argument("--storage", default=None, help="keep the sweeps here (default: a "
                        "temporary folder, removed at the end)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per sweep run")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: ResNet-20, packs 1,2, 64 images, batch 32, 3 epochs")
    args = parser.parse_args()
    quick = {"archs": "cifar_resnet20", "packs": "1,2", "epochs": 3, "train_subset": 64,
             "batch": 32, "device": "cpu"}
    full = {"archs": ",".join(ARCHS), "packs": "1,2,4", "epochs": 5, "batch": 256,
            "device": "cuda" if torch.cuda.is_available() else "cpu"}
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.archs = [a.strip() for a in args.archs.split(",") if a.strip()]
    try:
        args.packs = [int(k) for k in args.packs.split(",")]
    except ValueError:
        parser.error(f"--packs: comma-separated whole numbers, got {args.packs!r}")
    if not args.packs or min(args.packs) < 1 or 1 not in args.packs:
        parser.error("--packs: whole numbers ≥ 1, including 1 (the baseline)")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here")
    args.cpus = args.cpus or available_cpus()
    return args


def main() -> int:
    args = parse_args()
    storage = Path(args.storage) if args.storage else Path(tempfile.mkdtemp(prefix="packing-"))
    storage.mkdir(parents=True, exist_ok=True)
    where = (torch.cuda.get_device_name(0) if args.device == "cuda"
             else f"CPU ({args.cpus:g} CPUs shared)")
    print(f"{where}; SmoothAdv-PGD m=4 T=2, batch {args.batch}, {args.epochs} epochs, "
          f"CIFAR-shaped synthetic data; packs {args.packs}", flush=True)
    failures = left_behind = 0
    try:
        for arch in args.archs:
            base = None
            subset = args.train_subset or SUBSET.get(arch, 2048)
            print(f"\n{SHORT.get(arch, arch)} ({subset:,} training images per trial)", flush=True)
            for k in sorted(args.packs):
                spec = sweep_spec(f"pack{k}-{arch}", arch, k, args)
                wall, rc, left = run_sweep(spec, storage, args.timeout)
                sweep_dir = storage / spec["name"]
                metrics, states = ((read_trials(sweep_dir)) if (sweep_dir / "trials").is_dir()
                                   else ([], {}))
                done = sum(s == "TERMINATED" for s in states.values())
                left_behind += len(left)
                if rc != 0 or done < k or left or any(not rows for rows in metrics):
                    failures += 1
                    print(f"  k={k}: FAILED (exit {rc}; {done}/{k} trials finished; "
                          f"{len(left)} processes left behind and ended; log "
                          f"{storage / (spec['name'] + '.log')})", flush=True)
                    continue
                result = packing_result(metrics)
                base = base if base is not None else (result.per_hour if k == 1 else None)
                ratio = f"{speedup(result.per_hour, base):5.2f}×" if base else "  n/a"
                note = "" if result.concurrent >= 0.5 else "  (trials barely overlapped)"
                print(f"  k={k}: {result.per_hour:8.1f} trials/h of the whole "
                      f"{'GPU' if args.device == 'cuda' else 'CPU'}   ratio to k=1 {ratio}   "
                      f"per trial {result.trial_seconds:7.1f} s of training   shared "
                      f"{result.concurrent:4.2f}   ({done}/{k} finished, sweep {wall:.0f} s)"
                      f"{note}", flush=True)
    finally:
        if not args.storage and not failures:
            shutil.rmtree(storage, ignore_errors=True)
    print(f"\nprocesses the sweeps left behind: {left_behind or 'none'}"
          f"{' (ended)' if left_behind else ''}")
    if failures and not args.storage:
        print(f"kept {storage} (logs, sweeps)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
