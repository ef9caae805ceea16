"""The early-stopping replay (benchmarks/early_stop_replay.py) on a small grid of logs written
here: it reads pA back from CERTIFY's radius, stops what the rule stops, and counts the cost."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import norm
from smoothadv.common.binomial import cp_lower
from smoothadv.sweep.spec_blocks import EarlyStopping

spec = importlib.util.spec_from_file_location(
    "early_stop_replay", Path(__file__).resolve().parents[1] / "benchmarks/early_stop_replay.py")
replay_mod = importlib.util.module_from_spec(spec)
sys.modules["early_stop_replay"] = replay_mod
spec.loader.exec_module(replay_mod)

SIGMA = 0.25


def write_logs(folder: Path, radii: dict[str, float], images: int = 40) -> None:
    """One CERTIFY log per trial, every image right with the given radius (0: abstain)."""
    rows = []
    for i, (name, radius) in enumerate(radii.items()):
        predict = 1 if radius > 0 else -1
        pd.DataFrame({"idx": range(images), "label": 1, "predict": predict, "radius": radius,
                      "correct": int(predict == 1), "time": "0:00:01"}).to_csv(
            folder / f"{name}.tsv", sep="\t", index=False)
        rows.append({"path": f"{name}.tsv", "label": name, "sigma": SIGMA, "attack": "pgd",
                     "steps": 1 + i, "m_train": 1, "epsilon": 0.5, "method": "smoothadv"})
    pd.DataFrame(rows).to_csv(folder / "mapping.csv", index=False)


def test_pa_is_read_back_from_the_logged_radius():
    table = cp_lower(np.arange(replay_mod.LOG_N + 1), replay_mod.LOG_N, replay_mod.LOG_ALPHA)
    radius = np.array([0.1, 0.5, 0.0, 0.3])
    p = replay_mod.implied_p(radius, np.array([1, 1, 0, 0]), np.array([1, 1, -1, 2]), SIGMA,
                             table)
    # right: CERTIFY's bound at nA = p·n gives the radius back (to its 4 logged decimals)
    back = SIGMA * norm.ppf(cp_lower(p[:2] * replay_mod.LOG_N, replay_mod.LOG_N,
                                     replay_mod.LOG_ALPHA))
    assert np.allclose(back, radius[:2], atol=1e-4)
    assert p[2] == 0.5 and np.isclose(p[3], 1 - norm.cdf(0.3 / SIGMA))  # abstain, wrong


def test_the_replay_stops_the_dominated_trials_and_keeps_the_envelope(tmp_path):
    write_logs(tmp_path, {"bad": 0.0, "good": 1.0, "fair": 0.9, "poor": 0.0})
    trials = replay_mod.load_grid(tmp_path)
    assert [t.cost for t in trials] == [2, 3, 4, 5]  # m_train·(T + 1)
    schedule = EarlyStopping(images=40, min_trials=2)
    table = cp_lower(np.arange(schedule.n + 1), schedule.n, schedule.alpha)
    rng = np.random.default_rng(0)
    runs = [replay_mod.replay(trials, schedule, 9, (1.0, 1.0), 0, rng, table)
            for _ in range(3)]
    for trained in runs:
        # rung 1 after epoch 3: bad reports alone (t = 6) and is stopped by good's report
        # (t = 9) in its epoch 5; poor reports at t = 15, in its epoch 4, and stops at once
        assert list(trained) == [5, 9, 9, 4]
    s = replay_mod.summarize(trials, runs, 9, schedule)
    assert np.isclose(s["saving"], 14 * 9 / (2 * 5 + 3 * 9 + 4 * 9 + 5 * 4))
    assert np.isclose(s["epoch_saving"], 36 / 27)
    assert s["worst"].max() == 0 and s["share_any"] == 0
    assert np.isclose(s["bound"], 3.0)  # the first rung after 1/3 of the epochs
    # one trial at a time, in the logs' order: bad trains alone (no peer at its rung when it
    # reports, and a finished trial is never judged); poor meets the others' records
    late = replay_mod.replay(trials, schedule, 9, (1.0, 1.0), 1, rng, table)
    assert list(late) == [9, 9, 9, 4]
    # pA − ½ shrunk by 0.9 at the rung, the good trials certify nothing at r = 0.5 (their
    # proxy radius drops to about 0.37): where the envelope is below the margin nobody is
    # dominated, so every trial trains in full
    assert replay_mod.proxy_curve(trials[1], 0.9, schedule, table, rng)[0.5] == 0
    assert list(replay_mod.replay(trials, schedule, 9, (0.9, 0.9), 0, rng, table)) == [9] * 4


def test_a_trial_stopped_in_its_last_epoch_is_lost_without_a_saving(tmp_path):
    write_logs(tmp_path, {"good": 1.0, "bad": 0.0})
    good, bad = replay_mod.load_grid(tmp_path)
    slow_good = replay_mod.Trial("good", SIGMA, 10.0, good.p, good.final)
    schedule = EarlyStopping(images=40, min_trials=2, rungs=(0.5,))
    table = cp_lower(np.arange(schedule.n + 1), schedule.n, schedule.alpha)
    # the bad trial reports its rung (epoch 2 of 4) at t = 6, ends at t = 12; the good one
    # reports at t = 20: the bad one has finished training, so it is not stopped
    trained = replay_mod.replay([slow_good, bad], schedule, 4, (1.0, 1.0), 0,
                                np.random.default_rng(0), table)
    assert list(trained) == [4, 4]
    # the good trial reports at t = 10, in the bad one's last epoch: lost, nothing saved
    mid = replay_mod.Trial("good", SIGMA, 5.0, good.p, good.final)
    trained = replay_mod.replay([mid, bad], schedule, 4, (1.0, 1.0), 0,
                                np.random.default_rng(0), table)
    assert list(trained) == [4, -4]
    s = replay_mod.summarize([mid, bad], [trained], 4, schedule)
    assert s["saving"] == 1.0 and s["worst"].max() == 0
