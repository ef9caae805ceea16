"""Early stopping replayed at the paper's scale (issue 22 item 3): what the envelope rule saves
on a real grid of several hundred trials, and what it costs the envelope.

The final certification logs of a real grid stand in for its trials' final models (e.g.
SmoothAdv's released from-scratch CIFAR-10 logs, a folder with ``mapping.csv`` in
``smoothadv analyze --logs`` format; trials with fewer rows than the most are left out). Per
image, the probability pA that the base classifier gives the true label under noise is read
from its logged radius (CERTIFY, n = 100,000, α = 0.001): pA_lower = Φ(radius/σ), pA = nA/n for
the least count nA whose Clopper–Pearson bound reaches it; an abstention has pA = ½ and a wrong
prediction pA = 1 − Φ(radius/σ) (either certifies nothing at the proxy's n).

Each draw replays the sweep (``schedule:`` block of the spec, sweep.spec_blocks.EarlyStopping,
at its defaults unless flags say otherwise) through the real bookkeeping and rule of
sweep.early_stopping.Rungs:

- **the model at a rung**: the trial's pA shrunk toward ½ by a per-trial factor u,
  pA' = ½ + (pA − ½)·u, with u = 1 (``same``: the rung's model is the final one),
  u ~ U(0.8, 1) (``mild``) or u ~ U(0.6, 1) (``strong``), drawn once per trial and draw;
- **the proxy**: every k-th of the trial's images (EarlyStopping.proxy_skip), certified as the
  trial worker does (CERTIFY with the schedule's n0, n, α; two classes, the label and one
  rival with 1 − pA, which is the worst case for the selection step), its certified accuracy
  at EarlyStopping.radii_for(σ) (common.metrics.certified_accuracy);
- **time**: every trial starts at once (``--concurrency``: that many at a time, in the logs'
  order, a freed slot taken by the next) and trains an epoch in m_train·(T+1) time units
  (T + 1 passes of m noisy copies per batch); its rung results arrive after the rung epochs
  (EarlyStopping.rung_epochs) and are judged as sweep.early_stopping.EnvelopeScheduler does:
  the rung is recorded, the running same-σ peers still training are judged, then the trial itself.
  A trial stopped in the middle of an epoch ends after it (its workers read the decision after each
  epoch), one stopped during its last epoch is lost without a saving (as the trial worker does),
  and a stopped trial has no final certification.

Printed per degradation model: the training cost saved (full/kept, weighted by m_train·(T+1)
per epoch, and in trial-epochs), the proxies' own cost (images × (n0 + n) forward passes
per rung, against an epoch's 50,000 × m_train·(T+1) forward-backward passes counted as 3
forward passes each), and the upper envelope's loss (all trials' minus the kept trials', in
points) at r = 0, 0.25, …, 2.25: mean, worst, and the share of draws losing more than 1 point;
then over radii: the share of draws with a loss above 1 point anywhere. The saving's bound:
with the first rung after a fraction f of the epochs no rule saves more than 1/f.

    .venv/bin/python benchmarks/early_stop_replay.py LOGS_DIR [--draws 200] [--margin 0.05]
        [--images 100] [--n 500] [--rungs 0.34 0.67] [--min-trials 3] [--concurrency 0]

Figures (SmoothAdv's released CIFAR-10 logs, 440 complete trials, 150 epochs, 200 draws each;
issue 22's closing note has the commands): see docs/benchmarks.md "Early stopping at the
paper's scale".
"""

from __future__ import annotations

import argparse
import dataclasses
import heapq
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.stats import norm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from smoothadv.analysis.gather import gather  # noqa: E402
from smoothadv.common.binomial import cp_lower  # noqa: E402
from smoothadv.common.metrics import certified_accuracy  # noqa: E402
from smoothadv.sweep.early_stopping import Rungs  # noqa: E402 (the rule and bookkeeping replayed)
from smoothadv.sweep.spec_blocks import EarlyStopping  # noqa: E402

RADII = tuple(round(0.25 * i, 2) for i in range(10))  # 0, 0.25, …, 2.25 (the paper's)
MODELS = {"same": (1.0, 1.0), "mild": (0.8, 1.0), "strong": (0.6, 1.0)}
LOG_N, LOG_ALPHA = 100_000, 0.001  # how the logs were certified (Cohen et al.'s CERTIFY)
TRAIN_IMAGES, PASS_COST = 50_000, 3  # an epoch's images; a forward-backward pass ≈ 3 forward


@dataclass(frozen=True)
class Trial:
    name: str
    sigma: float
    cost: float              # time of one epoch: m_train·(T+1)
    p: np.ndarray            # per image, P(base classifier says the label under noise)
    final: np.ndarray        # certified accuracy at RADII from the logged rows


def implied_p(radius: np.ndarray, correct: np.ndarray, predict: np.ndarray, sigma: float,
              table: np.ndarray) -> np.ndarray:
    """pA per image from a CERTIFY row (module doc): nA/n for the least nA whose lower bound
    reaches Φ(radius/σ) when right, ½ when abstaining, 1 − Φ(radius/σ) when wrong."""
    lower = norm.cdf(np.asarray(radius, dtype=float) / sigma)
    counts = np.searchsorted(table, lower - 1e-12, side="left")
    p = np.where(correct == 1, np.minimum(counts, LOG_N) / LOG_N, 1 - lower)
    return np.where(predict < 0, 0.5, p)


def load_grid(logs: Path) -> list[Trial]:
    """The complete trials of the ``mapping.csv`` in ``logs`` (read by analysis.gather)."""
    g = gather([], logs=logs / "mapping.csv")
    trials = g.trials[g.trials["status"] == "ok"]
    full = int(trials["images"].max())
    table = cp_lower(np.arange(LOG_N + 1), LOG_N, LOG_ALPHA)
    by_trial = dict(tuple(g.results.groupby("trial", observed=True, sort=False)))
    out = []
    for row in trials[trials["images"] == full].itertuples():
        rows = by_trial[row.trial].sort_values("idx")
        radius, correct = rows["radius"].to_numpy(float), rows["correct"].to_numpy(int)
        out.append(Trial(row.trial, float(row.sigma), float(row.m_train * (row.steps + 1)),
                         implied_p(radius, correct, rows["predict"].to_numpy(int),
                                   float(row.sigma), table),
                         certified_accuracy(radius, correct == 1, RADII)))
    return out


def proxy_curve(trial: Trial, shrink: float, schedule: EarlyStopping, table: np.ndarray,
                rng: np.random.Generator) -> dict[float, float]:
    """The proxy certification a rung reports (module doc), radius → certified accuracy."""
    p = 0.5 + (trial.p[::schedule.proxy_skip(len(trial.p))] - 0.5) * shrink
    votes = rng.binomial(schedule.n0, p)
    chosen = (2 * votes > schedule.n0) | ((2 * votes == schedule.n0) & (rng.random(len(p)) < .5))
    lower = table[rng.binomial(schedule.n, p)]
    ok = chosen & (lower >= 0.5)
    radius = np.where(ok, trial.sigma * norm.ppf(np.clip(lower, 0.5, 1 - 1e-16)), 0.0)
    radii = schedule.radii_for(trial.sigma)
    return dict(zip(radii, certified_accuracy(radius, ok, radii), strict=True))


def replay(trials: Sequence[Trial], schedule: EarlyStopping, epochs: int,
           model: tuple[float, float], concurrency: int, rng: np.random.Generator,
           table: np.ndarray) -> np.ndarray:
    """One draw: the epochs each trial trains, with ``-epochs`` for one stopped in its last
    epoch (trained in full, no final model)."""
    rungs = schedule.rung_epochs(epochs)
    shrink = rng.uniform(*model, size=len(trials))
    book = Rungs(schedule.margin, schedule.min_trials)
    slots = concurrency or len(trials)
    start = np.full(len(trials), np.nan)
    trained = np.full(len(trials), epochs, dtype=float)
    events: list[tuple[float, int, int, int]] = []  # (time, order, trial, epoch)
    pending = list(range(len(trials)))[::-1]
    running: set[int] = set()

    def begin(i: int, t: float) -> None:
        start[i] = t
        running.add(i)
        for e in sorted(rungs):
            heapq.heappush(events, (t + e * trials[i].cost, i, i, e))
        heapq.heappush(events, (t + epochs * trials[i].cost, i, i, epochs))

    def end(i: int, t: float) -> None:
        running.discard(i)
        if pending:
            begin(pending.pop(), t)

    def judge(j: int, t: float) -> None:
        name = trials[j].name
        if name in book.stopped or book.stop(name) is None:
            return
        done = math.floor((t - start[j]) / trials[j].cost) + 1
        trained[j] = done if done < epochs else -epochs
        end(j, start[j] + min(done, epochs) * trials[j].cost)

    for _ in range(min(slots, len(trials))):
        begin(pending.pop(), 0.0)
    while events:
        t, _, i, e = heapq.heappop(events)
        if i not in running or t > start[i] + abs(trained[i]) * trials[i].cost:
            continue
        if e == epochs:
            end(i, t)
            continue
        name = trials[i].name
        book.record(name, trials[i].sigma, rungs[e], e,
                    proxy_curve(trials[i], shrink[i], schedule, table, rng))
        for j in sorted(running):  # the running same-σ peers still in training, then itself
            if j != i and trials[j].sigma == trials[i].sigma and \
                    t < start[j] + epochs * trials[j].cost:
                judge(j, t)
        judge(i, t)
    return trained


def summarize(trials: Sequence[Trial], runs: list[np.ndarray], epochs: int,
              schedule: EarlyStopping) -> dict[str, object]:
    """Saving and envelope loss over the draws ``runs`` (module doc)."""
    cost = np.array([t.cost for t in trials])
    finals = np.stack([t.final for t in trials])
    full_env = finals.max(axis=0)
    losses, savings, epoch_savings = [], [], []
    for trained in runs:
        kept = trained == epochs
        losses.append(100 * (full_env - finals[kept].max(axis=0, initial=0.0)))
        spent = np.abs(trained)
        savings.append(cost.sum() * epochs / (cost * spent).sum())
        epoch_savings.append(len(trials) * epochs / spent.sum())
    losses = np.array(losses)
    proxies = len(schedule.rung_epochs(epochs)) * len(trials) * schedule.images * (
        schedule.n0 + schedule.n)
    training = cost.sum() * epochs * TRAIN_IMAGES * PASS_COST
    first = min(schedule.rung_epochs(epochs), default=epochs) / epochs
    return {"saving": float(np.mean(savings)), "saving_min": float(np.min(savings)),
            "epoch_saving": float(np.mean(epoch_savings)), "bound": 1 / first,
            "stopped": float(np.mean([(r != epochs).sum() for r in runs])),
            "proxy_share": proxies / training,
            "mean": losses.mean(axis=0), "worst": losses.max(axis=0),
            "share": (losses > 1 + 1e-9).mean(axis=0),
            "share_any": float((losses > 1 + 1e-9).any(axis=1).mean())}


def report(label: str, s: dict[str, object]) -> str:
    head = " ".join(f"{r:>5g}" for r in RADII)
    lines = [f"{label}: saves {s['saving']:.2f}× of the training cost (worst draw "
             f"{s['saving_min']:.2f}×; {s['epoch_saving']:.2f}× in trial-epochs; bound "
             f"{s['bound']:.2f}×), {s['stopped']:.0f} trials stopped per draw; proxies cost "
             f"{100 * s['proxy_share']:.2f} % of full training",
             f"  envelope loss, points   r = {head}",
             "  mean                       " + " ".join(f"{v:5.2f}" for v in s["mean"]),
             "  worst                      " + " ".join(f"{v:5.1f}" for v in s["worst"]),
             "  share of draws > 1 point   " + " ".join(f"{v:5.2f}" for v in s["share"]),
             f"  share of draws losing > 1 point at some radius: {s['share_any']:.3f}"]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("logs", type=Path, help="folder with mapping.csv and the logs")
    parser.add_argument("--draws", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=150, help="each trial's (the paper's)")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--margin", type=float, default=EarlyStopping.margin)
    parser.add_argument("--images", type=int, default=EarlyStopping.images)
    parser.add_argument("--n", type=int, default=EarlyStopping.n, help="the proxy's samples")
    parser.add_argument("--rungs", type=float, nargs="+", default=list(EarlyStopping.rungs))
    parser.add_argument("--min-trials", type=int, default=EarlyStopping.min_trials)
    parser.add_argument("--concurrency", type=int, default=0, help="0: every trial at once")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    schedule = dataclasses.replace(EarlyStopping(), margin=args.margin, images=args.images,
                                   n=args.n, rungs=tuple(args.rungs),
                                   min_trials=args.min_trials).validate()
    trials = load_grid(args.logs)
    table = cp_lower(np.arange(schedule.n + 1), schedule.n, schedule.alpha)
    print(f"{len(trials)} trials, {args.epochs} epochs, rungs at "
          f"{sorted(schedule.rung_epochs(args.epochs))}, proxy {schedule.images} images "
          f"(n0={schedule.n0}, n={schedule.n}, α={schedule.alpha:g}), margin {schedule.margin:g}, "
          f"min_trials {schedule.min_trials}, concurrency {args.concurrency or 'all'}, "
          f"{args.draws} draws", flush=True)
    for name in args.models:
        rng = np.random.default_rng([args.seed, list(MODELS).index(name)])
        runs = [replay(trials, schedule, args.epochs, MODELS[name], args.concurrency, rng,
                       table) for _ in range(args.draws)]
        print(report(f"{name} (u ~ U{MODELS[name]})",
                     summarize(trials, runs, args.epochs, schedule)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
