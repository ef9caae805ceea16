"""Does training in bfloat16 (a trial's ``amp: true``) change certified accuracy? The SmoothAdv-PGD
model of benchmarks/fashion_mnist_claim.py (LeNet, real Fashion-MNIST, σ = 0.5, ε = 1, T = 2,
m = 2 multi-noise) trained with S seeds in float32 (``amp: false``, the default) and in bfloat16
(``amp: true``: the attack's and the update's forward passes under bfloat16 autocast), on CPU.

Seed s of either precision is the same trial but for ``amp`` (same initial weights, order,
noise), and its model is certified by CERTIFY in float32 with sampling seed s on the same test
images (every ``skip``-th), so precision is the only thing that differs within a seed; between
seeds everything does. Printed per radius r (certified accuracy %, and ACR): each precision's
mean ± sd over the S seeds, bf16 − fp32 (difference of the means), float32's seed-to-seed sd and
range (max − min), and a verdict. Rule: bf16 is "within noise" at r when
|bf16 − fp32| ≤ 2·sd₃₂·√(2/S), two standard errors of a difference of two S-seed means with
float32's sd standing for both; otherwise "outside" (Welch's t-test p-value is printed beside
it, for information). Also printed: training seconds per model
(the sum of its epochs' ``epoch_seconds``, so a resumed run counts them too) and the speed ratio.

Everything lives in ``--out``; a re-run resumes training from the epoch checkpoints and
certification after the last written row (seeds run in pairs, float32 first, so a cut-short run
leaves whole pairs). ``--quick`` is a ~30-second smoke version in its own sub-folder.
Set OMP_NUM_THREADS=1 on a busy machine.

    OMP_NUM_THREADS=1 python benchmarks/bf16_vs_fp32.py --out DIR [--seeds 0 1 2 3 4]
        [--epochs 4] [--train-subset 20000] [--n 1000] [--skip 40] [--quick]

Measured with the defaults (``OMP_NUM_THREADS=1 python benchmarks/bf16_vs_fp32.py --out DIR``:
5 seeds, 4 epochs on 20,000 training images, CERTIFY n0 = 100, n = 1,000, α = 0.001 on 250
test images; 1,501 s in all) on a busy 2-core AMD EPYC with avx512_bf16, torch 2.14:

    over 5 seeds (rule: within noise iff |bf16−fp32| ≤ 2·sd32·√(2/S)):
                 float32      bfloat16 bf16−fp32 fp32 sd fp32 max−min bound      verdict Welch p
       r=0    76.2 ± 1.7    76.7 ± 1.0      +0.6     1.7          4.4   2.2 within noise    0.55
    r=0.25    72.9 ± 1.4    72.8 ± 0.7      -0.1     1.4          3.6   1.7 within noise    0.91
     r=0.5    69.4 ± 0.7    68.8 ± 0.5      -0.6     0.7          2.0   0.9 within noise    0.15
    r=0.75    65.0 ± 0.6    64.8 ± 0.6      -0.2     0.6          1.2   0.8 within noise    0.68
       r=1    59.8 ± 0.5    59.7 ± 0.7      -0.1     0.5          1.2   0.6 within noise    0.84
       ACR 0.816 ± 0.006 0.815 ± 0.003    -0.001   0.006        0.015 0.008 within noise    0.87

    training seconds per model (mean over seeds): float32 146, bfloat16 92; bf16 speed-up 1.59×
    (per seed: 1.23×, 2.55×, 1.61×, 1.44×, 1.32×; the machine's load varied)

bfloat16 training is within float32's seed-to-seed noise at every radius (and in ACR) here, and
1.6× faster on this CPU. Only this small setting is measured (LeNet, 4 epochs, CPU): the default
stays float32 (``amp: false``), the reference's precision.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from fashion_mnist_claim import (  # a sibling: run this file as a script
    ALPHA,
    CERTIFY_BATCH,
    FULL,
    N0,
    QUICK,
    RADII,
    Plan,
    certified_row,
    trial_config,
)
from scipy.stats import norm, ttest_ind
from smoothadv.certify.runner import Sampling, smooth_checkpoint
from smoothadv.common.errors import UserError
from smoothadv.common.layout import CHECKPOINT, METRICS
from smoothadv.trainers.config import parse_trial_config
from smoothadv.trainers.train import train_trial

PRECISIONS = {"float32": False, "bfloat16": True}  # label → the trial's amp
COLUMNS = [f"r={r:g}" for r in RADII] + ["ACR"]
# The full run's sizes: the claim benchmark's, certified on every 40th test image (250) at
# n = 1,000 so that 5 seeds × 2 precisions took 25 minutes on a busy 2-core CPU.
DEFAULT = dataclasses.replace(FULL, skip=40, n=1_000)


def seed_folder(out: Path, precision: str, seed: int) -> Path:
    return out / precision / f"seed{seed}"


def train_and_certify(folder: Path, plan: Plan, sigma: float, epochs: int, seed: int,
                      amp: bool, n: int) -> tuple[list[float], float]:
    """Train (or resume) one model and certify it (or resume its rows); its certified row
    (:func:`fashion_mnist_claim.certified_row`) and its training seconds."""
    config = trial_config("smoothadv", "pgd", plan, sigma, epochs)
    config = parse_trial_config({**config.to_dict(), "seed": seed, "amp": amp})
    train_trial(config, folder, progress=False)
    results = folder / f"certify_n{n}.tsv"
    sampling = Sampling(sigma=sigma, n=n, alpha=ALPHA, n0=N0, seed=seed)
    smooth_checkpoint(folder / CHECKPOINT, sampling, results, skip=plan.skip,
                      batch_size=CERTIFY_BATCH, device="cpu", progress=False)
    seconds = sum(json.loads(line)["epoch_seconds"] for line in (folder / METRICS).open())
    return certified_row(results), seconds


def run(out: Path, plan: Plan, sigma: float, epochs: int, seeds: list[int], n: int
        ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every (seed, precision) model: certified accuracy (%) at RADII, ACR and images, one row
    each; and training seconds (seed × precision)."""
    rows, seconds = {}, {}
    for seed in seeds:
        for precision, amp in PRECISIONS.items():
            t0 = time.perf_counter()
            row, train_s = train_and_certify(seed_folder(out, precision, seed), plan, sigma,
                                             epochs, seed, amp, n)
            rows[(precision, seed)] = row
            seconds[(seed, precision)] = train_s
            print(f"seed {seed} {precision}: trained in {train_s:.0f} s; this call "
                  f"{time.perf_counter() - t0:.0f} s; certified % at r = "
                  + ", ".join(f"{r:g}: {a:.1f}" for r, a in zip(RADII, row, strict=False)),
                  flush=True)
    table = pd.DataFrame.from_dict(rows, orient="index", columns=[*COLUMNS, "images"])
    table.index = pd.MultiIndex.from_tuples(table.index, names=["precision", "seed"])
    table = table.loc[list(PRECISIONS)]  # float32's seeds, then bfloat16's
    times = pd.Series(seconds).unstack()[list(PRECISIONS)]
    return table, times


def compare(table: pd.DataFrame) -> pd.DataFrame:
    """Per radius (and ACR): each precision's mean ± sd over seeds, bf16 − fp32, float32's sd
    and range, the noise bound 2·sd₃₂·√(2/S) and the verdict."""
    fp32, bf16 = table.loc["float32", COLUMNS], table.loc["bfloat16", COLUMNS]
    seeds = len(fp32)
    out = {}
    for column in COLUMNS:
        a, b = fp32[column].to_numpy(), bf16[column].to_numpy()
        sd = a.std(ddof=1) if seeds > 1 else math.nan
        diff = b.mean() - a.mean()
        bound = 2 * sd * math.sqrt(2 / seeds)
        out[column] = {
            "fp32 mean": a.mean(), "fp32 sd": sd, "bf16 mean": b.mean(),
            "bf16 sd": b.std(ddof=1) if seeds > 1 else math.nan, "bf16-fp32": diff,
            "fp32 range": np.ptp(a), "bound": bound,
            "welch p": welch_p(a, b),
            "verdict": "within noise" if abs(diff) <= bound else "OUTSIDE noise"}
    return pd.DataFrame.from_dict(out, orient="index")


def welch_p(a: np.ndarray, b: np.ndarray) -> float:
    """Welch's two-sided t-test p-value for equal means (nan when both are constant); printed
    beside the verdict, not part of the rule."""
    if len(a) < 2 or (np.ptp(a) == 0 and np.ptp(b) == 0):
        return math.nan
    return float(ttest_ind(b, a, equal_var=False).pvalue)


def report(table: pd.DataFrame, times: pd.DataFrame, plan: Plan, sigma: float, epochs: int,
           n: int) -> None:
    seeds = sorted(table.loc["float32"].index)
    reach = sigma * norm.ppf(ALPHA ** (1 / n))
    print(f"\nFashion-MNIST, LeNet, SmoothAdv-PGD σ={sigma:g} ε={plan.epsilon:g} "
          f"T={plan.steps} m={plan.m_train} (multi-noise), {epochs} epochs on "
          f"{plan.train_subset} training images; seeds {seeds}; "
          f"{torch.get_num_threads()} CPU threads")
    print(f"CERTIFY (float32) on every {plan.skip}th test image "
          f"({int(table['images'].iloc[0])} images), n0={N0}, n={n}, α={ALPHA:g}; largest "
          f"certifiable radius {reach:.2f}\n")
    print("per model, certified accuracy (%) and ACR:")
    print(table.to_string(float_format="{:.1f}".format,
                          formatters={"ACR": "{:.3f}".format, "images": "{:.0f}".format}))
    summary = compare(table)
    print(f"\nover {len(seeds)} seeds (rule: within noise iff |bf16−fp32| ≤ "
          "2·sd32·√(2/S)):")
    lines = []
    for name, s in summary.iterrows():
        digits = 3 if name == "ACR" else 1
        f = f"{{:.{digits}f}}".format
        lines.append({"": name, "float32": f"{f(s['fp32 mean'])} ± {f(s['fp32 sd'])}",
                      "bfloat16": f"{f(s['bf16 mean'])} ± {f(s['bf16 sd'])}",
                      "bf16−fp32": f"{s['bf16-fp32']:+.{digits}f}",
                      "fp32 sd": f(s["fp32 sd"]), "fp32 max−min": f(s["fp32 range"]),
                      "bound": f(s["bound"]), "verdict": s["verdict"],
                      "Welch p": f"{s['welch p']:.2f}"})
    print(pd.DataFrame(lines).to_string(index=False))
    mean_s = times.mean()
    print(f"\ntraining seconds per model (mean over seeds): float32 {mean_s['float32']:.0f}, "
          f"bfloat16 {mean_s['bfloat16']:.0f}; bf16 speed-up "
          f"{mean_s['float32'] / mean_s['bfloat16']:.2f}× (per seed: "
          + ", ".join(f"{a / b:.2f}×" for a, b in zip(times["float32"], times["bfloat16"],
                                                      strict=True)) + ")")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="output folder (default: a new temp dir)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None,
                        help="training (and sampling) seeds (default 0 1 2 3 4; quick: 0 1)")
    parser.add_argument("--sigma", type=float, default=0.5)
    parser.add_argument("--epochs", type=int, default=None,
                        help=f"default {DEFAULT.epochs} (quick: {QUICK.epochs})")
    parser.add_argument("--train-subset", type=int, default=None,
                        help=f"default {DEFAULT.train_subset} (quick: {QUICK.train_subset})")
    parser.add_argument("--n", type=int, default=None,
                        help=f"CERTIFY samples per image (default {DEFAULT.n:,}; quick: {QUICK.n})")
    parser.add_argument("--skip", type=int, default=None,
                        help=f"certify every skip-th test image (default {DEFAULT.skip}: "
                             f"{10_000 // DEFAULT.skip} images; quick: {QUICK.skip})")
    parser.add_argument("--quick", action="store_true", help="a ~30-second smoke version")
    args = parser.parse_args()
    plan = QUICK if args.quick else DEFAULT
    plan = dataclasses.replace(plan, **{k: v for k, v in (
        ("train_subset", args.train_subset), ("skip", args.skip), ("n", args.n),
        ("epochs", args.epochs)) if v is not None})
    seeds = args.seeds or ([0, 1] if args.quick else [0, 1, 2, 3, 4])
    if len(set(seeds)) < 2:
        parser.error("--seeds: give at least two distinct seeds (the spread needs them)")
    base = Path(args.out or tempfile.mkdtemp(prefix="bf16_vs_fp32_"))
    out = base / ("quick" if args.quick else "full")
    print(f"outputs in {out} (to resume, re-run with --out {base})", flush=True)
    t0 = time.perf_counter()
    try:
        Sampling(sigma=args.sigma, n=plan.n, alpha=ALPHA, n0=N0).validate()
        table, times = run(out, plan, args.sigma, plan.epochs, sorted(set(seeds)), plan.n)
    except UserError as e:
        parser.error(str(e))
    report(table, times, plan, args.sigma, plan.epochs, plan.n)
    print(f"total wall time: {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
