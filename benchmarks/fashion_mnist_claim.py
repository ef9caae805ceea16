"""SmoothAdv's claim on a small scale: at the same σ, SmoothAdv training (PGD and DDN) gives
higher certified accuracy at larger ℓ2 radii than Gaussian augmentation (Salman et al. 2019,
Section 4; Cohen et al. 2019), here with LeNet on real Fashion-MNIST on CPU.

The three models share σ, epochs, seed, learning-rate schedule and training subset (SmoothAdv:
the same ε, T and m, multi-noise updates); all are trained by
``trainers.train.train_trial`` and certified by CERTIFY (n0 = 100, α = 0.001) on the same test
images (every 20th: 500 images). Certified accuracy at r is the fraction certified correct with
radius ≥ r; ACR = mean of radius·[certified correct]. CERTIFY cannot certify a radius beyond
σ·Φ⁻¹(α^(1/n)) (all n samples correct), which is printed beside the table.

Everything lives in ``--out``; a re-run resumes training from the epoch checkpoints and
certification after the last written row. ``--quick`` is a ~1-minute smoke version (its own
sub-folder, so it never mixes with the full run). The full run took 22 minutes with
OMP_NUM_THREADS=1 on a busy 2-core machine (training 147 s Gaussian, 435 s SmoothAdv-PGD,
138 s SmoothAdv-DDN; certification 1.5-6 min per model).
On a busy machine set OMP_NUM_THREADS=1: spinning OpenMP threads made epochs up to 10× slower.

    python benchmarks/fashion_mnist_claim.py [--out DIR] [--sigma 0.5] [--epochs 4] [--n 2000]
    python benchmarks/fashion_mnist_claim.py --quick
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from scipy.stats import norm
from smoothadv.certify.runner import Sampling, smooth_checkpoint
from smoothadv.common.errors import UserError
from smoothadv.common.layout import CHECKPOINT
from smoothadv.common.metrics import average_certified_radius, certified_accuracy, right_rows
from smoothadv.trainers.config import TrialConfig, parse_trial_config
from smoothadv.trainers.train import train_trial

# Table row → (method, attack); each row's model lives in --out/<row>.
ROWS = {"gaussian": ("gaussian", "pgd"), "smoothadv": ("smoothadv", "pgd"),
        "smoothadv_ddn": ("smoothadv", "ddn")}
RADII = (0.0, 0.25, 0.5, 0.75, 1.0)
N0, ALPHA, CERTIFY_BATCH = 100, 0.001, 400


@dataclass(frozen=True)
class Plan:
    """The sizes of one run (full or quick); ``epochs`` and ``n`` are the flags' defaults."""

    train_subset: int
    epoch_test_subset: int  # images for the per-epoch noisy test accuracy
    skip: int  # certify every skip-th test image
    epsilon: float
    steps: int
    m_train: int
    warmup_epochs: int
    epochs: int
    n: int


FULL = Plan(train_subset=20_000, epoch_test_subset=1_000, skip=20, epsilon=1.0, steps=2, m_train=2,
            warmup_epochs=2, epochs=4, n=2_000)
QUICK = Plan(train_subset=1_000, epoch_test_subset=200, skip=200, epsilon=1.0, steps=2, m_train=2,
             warmup_epochs=1, epochs=1, n=200)


def trial_config(method: str, attack: str, plan: Plan, sigma: float, epochs: int
                 ) -> TrialConfig:
    """The shared recipe; only ``method`` and ``attack`` differ between the models. The learning
    rate drops ×0.1 for the last epoch."""
    return parse_trial_config({
        "dataset": "fashion_mnist", "arch": "lenet", "method": method, "attack": attack,
        "multi_noise": True,
        "sigma": sigma, "epsilon": plan.epsilon, "steps": plan.steps, "m_train": plan.m_train,
        "warmup_epochs": plan.warmup_epochs, "epochs": epochs, "batch_size": 64, "lr": 0.05,
        "lr_step": max(1, epochs - 1), "lr_gamma": 0.1, "train_subset": plan.train_subset,
        "epoch_test_subset": plan.epoch_test_subset, "seed": 0, "device": "cpu",
    })


def certified_row(results: Path) -> list[float]:
    """Certified accuracy (%) at RADII, ACR, and the number of images, from a CERTIFY file."""
    rows = pd.read_csv(results, sep="\t")
    ok = right_rows(rows)
    radius = rows["radius"].to_numpy(dtype=float)
    return [*(100 * certified_accuracy(radius, ok, RADII)), average_certified_radius(radius, ok),
            len(rows)]


def run(out: Path, plan: Plan, epochs: int, sampling: Sampling) -> pd.DataFrame:
    """Train (or resume) and certify every model; one table row each. A folder trained with
    other settings is refused by train_trial (choose another --out)."""
    table = {}
    for row, (method, attack) in ROWS.items():
        folder = out / row
        config = trial_config(method, attack, plan, sampling.sigma, epochs)
        t0 = time.perf_counter()
        train_trial(config, folder, progress=False)
        t_train = time.perf_counter() - t0
        results = folder / f"certify_n{sampling.n}.tsv"
        smooth_checkpoint(folder / CHECKPOINT, sampling, results, skip=plan.skip,
                          batch_size=CERTIFY_BATCH, device="cpu", progress=False)
        t_certify = time.perf_counter() - t0 - t_train
        print(f"{row}: training {t_train:.0f} s, certification {t_certify:.0f} s "
              "(in this run; resumed work is not counted)", flush=True)
        table[row] = certified_row(results)
    columns = [f"r={r:g}" for r in RADII] + ["ACR", "images"]
    return pd.DataFrame.from_dict(table, orient="index", columns=columns)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="output folder (default: a new temp dir)")
    parser.add_argument("--sigma", type=float, default=0.5)
    parser.add_argument("--epochs", type=int, default=None,
                        help=f"default {FULL.epochs} (quick: {QUICK.epochs})")
    parser.add_argument("--n", type=int, default=None,
                        help=f"CERTIFY samples per image (default {FULL.n:,}; quick: {QUICK.n})")
    parser.add_argument("--quick", action="store_true", help="a ~1-minute smoke version")
    args = parser.parse_args()
    plan = QUICK if args.quick else FULL
    epochs = plan.epochs if args.epochs is None else args.epochs
    n = plan.n if args.n is None else args.n
    sampling = Sampling(sigma=args.sigma, n=n, alpha=ALPHA, n0=N0)
    base = Path(args.out or tempfile.mkdtemp(prefix="fashion_mnist_claim_"))
    out = base / ("quick" if args.quick else "full")
    print(f"outputs in {out} (to resume, re-run with --out {base})", flush=True)
    t0 = time.perf_counter()
    try:
        sampling.validate()
        table = run(out, plan, epochs, sampling)
    except UserError as e:
        parser.error(str(e))
    reach = args.sigma * norm.ppf(ALPHA ** (1 / n))
    print(f"\nFashion-MNIST, LeNet, σ={args.sigma:g}, {epochs} epochs on {plan.train_subset} "
          f"training images; SmoothAdv-PGD and -DDN ε={plan.epsilon:g}, T={plan.steps}, "
          f"m={plan.m_train} (multi-noise); {torch.get_num_threads()} CPU threads")
    print(f"certified accuracy (%) on every {plan.skip}th test image, n0={N0}, n={n}, "
          f"α={ALPHA:g}; largest certifiable radius {reach:.2f}")
    formats = {c: "{:.1f}".format for c in table.columns}
    formats["ACR"] = "{:.3f}".format
    formats["images"] = "{:.0f}".format
    print(table.to_string(formatters=formats))
    print(f"total wall time: {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
