"""The SmoothAdv empirical attack (`certify.attack`, `smoothadv attack`).

Against a linear classifier the optimal ℓ2 attack of radius ε moves x by ε along −w (towards the
hyperplane), leaving the smoothed classifier a signed margin d − ε. The images below are chosen
with |d − ε| ≥ GAP, where PREDICT (σ = 0.25, n = 2000, α = 0.001) returns the true class with
probability ≥ 1 − 1e-20 (d − ε ≥ GAP) or not (d − ε ≤ −GAP; binomial tails from scipy.stats).
"""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pandas as pd
import pytest
import torch
from conftest import LinearBinary
from scipy.stats import binom, binomtest, norm
from smoothadv.certify.attack import AttackSettings, run_attack
from smoothadv.cli.main import main
from smoothadv.common.errors import UserError
from smoothadv.common.layout import meta_path

SIGMA, N, ALPHA, GAP = 0.25, 2000, 0.001, 0.1
SHAPE = (1, 2, 4)


@pytest.fixture
def diagonal_classifier() -> LinearBinary:
    """The hyperplane through 0.5·1 with unit normal w = 1/√8: margin(x) = w·x − √2, so the
    image at signed margin d is 0.5·1 + d·w and stays inside [0,1]⁸ for |d| ≤ 1.41."""
    return LinearBinary(torch.ones(SHAPE), -math.sqrt(2))


def image_at(margin: float) -> torch.Tensor:
    return 0.5 + margin * torch.ones(SHAPE) / math.sqrt(8)


def dataset_at(margins: list[float]) -> list[tuple[torch.Tensor, int]]:
    """Images labelled by their side of the hyperplane, so the clean point is correct."""
    return [(image_at(d), int(d > 0)) for d in margins]


def read(path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t")


def without_time(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.drop(columns="time").reset_index(drop=True)


def test_predict_is_decided_at_the_gap():
    # The tolerance claimed in the module docstring: the smallest winning count of PREDICT's
    # test, and the chance that the count lands on the wrong side of it, for both outcomes.
    threshold = next(k for k in range(N // 2, N + 1) if binomtest(k, N, 0.5).pvalue <= ALPHA)
    p = norm.cdf(GAP / SIGMA)
    assert binom.cdf(threshold - 1, N, p) < 1e-20
    assert binom.sf(threshold - 1, N, 1 - p) < 1e-20


def test_attack_on_a_linear_classifier_removes_exactly_epsilon_of_margin(diagonal_classifier,
                                                                         tmp_path):
    magnitudes = [0.12, 0.4, 0.88, 1.15, 1.35]
    margins = [s * d for d in magnitudes for s in (1, -1)]
    epsilons = (0.0, 0.25, 1.0)
    settings = AttackSettings(sigma=SIGMA, epsilons=epsilons, steps=20, m_test=16, n=N,
                              alpha=ALPHA, seed=0)
    diagonal_classifier.train()
    out = tmp_path / "attack.tsv"
    run_attack(diagonal_classifier, 2, dataset_at(margins), range(len(margins)), settings, out,
               batch_size=512, progress=False)
    assert diagonal_classifier.training  # mode restored
    assert all(p.requires_grad for p in diagonal_classifier.parameters())
    rows = read(out)
    assert len(rows) == len(margins) * len(epsilons)
    for row in rows.itertuples():
        left = abs(margins[row.idx]) - row.epsilon  # the attacked point's margin
        assert abs(left) >= GAP  # every case is decided
        assert row.correct == int(left > 0), (margins[row.idx], row.epsilon, row.predict)
    wrong = rows[rows["correct"] == 0]
    assert len(wrong) and (wrong["predict"] == 1 - wrong["label"]).all()  # flipped, no abstain
    assert (rows.loc[rows["correct"] == 1, "predict"] == rows.loc[rows["correct"] == 1, "label"]
            ).all()


@pytest.fixture
def coin_flips():
    """Points the attack leaves near the hyperplane, so PREDICT's answers depend on the noise."""
    margins = [0.3 + 0.01 * i for i in range(-6, 6)]
    settings = AttackSettings(sigma=SIGMA, epsilons=(0.25, 0.3), steps=4, m_test=4, n=30,
                              alpha=0.3, seed=0)
    return dataset_at(margins), settings


def test_resume_and_shards_reproduce_one_uninterrupted_run(diagonal_classifier, tmp_path,
                                                           coin_flips):
    images, settings = coin_flips
    everything = range(len(images))

    def attack(out, indices, seed=0):
        run_attack(diagonal_classifier, 2, images, indices,
                   replace(settings, seed=seed), out, progress=False)
        return read(out)

    full = attack(tmp_path / "full.tsv", everything)
    assert full[["idx", "epsilon"]].apply(tuple, axis=1).tolist() == [
        (i, e) for i in everything for e in settings.epsilons]
    # the rows depend on the noise, so equal rows below mean equal noise per (idx, ε)
    other_seed = attack(tmp_path / "seed1.tsv", everything, seed=1)
    assert not without_time(other_seed).equals(without_time(full))
    assert full["predict"].nunique() >= 2

    out = tmp_path / "resumed.tsv"
    attack(out, range(5))
    raw = out.read_bytes()
    # Drop the last row (image 4 keeps only its first ε) and leave a torn line behind.
    kept = raw[: raw.rstrip(b"\n").rfind(b"\n") + 1]
    out.write_bytes(kept + b"4\t1\t0.3\t")
    resumed = attack(out, everything)
    assert out.read_bytes().startswith(kept)  # the finished rows were not attacked again
    pd.testing.assert_frame_equal(without_time(resumed), without_time(full))

    shard = attack(tmp_path / "shard.tsv", range(7, len(images)))
    pd.testing.assert_frame_equal(without_time(shard),
                                  without_time(full[full["idx"] >= 7]))


@pytest.mark.parametrize("change,field", [({"epsilons": (0.25, 0.5)}, "epsilons"),
                                          ({"m_test": 8}, "m_test"), ({"steps": 5}, "steps"),
                                          ({"seed": 3}, "seed")])
def test_other_settings_are_refused_and_leave_the_file_alone(diagonal_classifier, tmp_path,
                                                             coin_flips, change, field):
    images, settings = coin_flips
    out = tmp_path / "a.tsv"
    run_attack(diagonal_classifier, 2, images, range(3), settings, out, progress=False)
    before, meta_before = out.read_bytes(), meta_path(out).read_bytes()
    changed = replace(settings, **change)
    with pytest.raises(UserError, match=f"{field}="):
        run_attack(diagonal_classifier, 2, images, range(6), changed, out, progress=False)
    assert out.read_bytes() == before
    assert meta_path(out).read_bytes() == meta_before


def attack_args(ckpt, out, *extra):
    return ["attack", str(ckpt), "--sigma", "0.25", "--epsilon", "0.25", "0.5", "--steps", "3",
            "--m-test", "8", "--n", "100", "--alpha", "0.01", "--batch", "64", "--skip", "64",
            "--out", str(out), "--device", "cpu", "--no-progress", *extra]


def test_cli_attacks_every_image_at_every_epsilon_and_prints_per_epsilon_accuracy(
        synthetic_checkpoint, tmp_path, capsys):
    out = tmp_path / "attack.tsv"
    assert main(attack_args(synthetic_checkpoint, out, "--max", "200")) == 0
    capsys.readouterr()
    assert main(attack_args(synthetic_checkpoint, out)) == 0  # resumes the first 4 images
    printed = capsys.readouterr().out.strip().splitlines()
    rows = read(out)
    assert list(rows.columns) == ["idx", "label", "epsilon", "predict", "correct", "time"]
    assert rows[["idx", "epsilon"]].apply(tuple, axis=1).tolist() == [
        (i, e) for i in range(0, 512, 64) for e in (0.25, 0.5)]
    assert ((rows["correct"] == 1) == (rows["predict"] == rows["label"])).all()
    accuracy = rows.groupby("epsilon")["correct"].mean()
    expected = [f"eps {e:g}: empirical accuracy {accuracy[e]:.3f} (8 images)" for e in (0.25, 0.5)]
    assert printed == expected
    meta = json.loads(meta_path(out).read_text())
    assert meta["epsilons"] == [0.25, 0.5]
    assert {"steps": 3, "m_test": 8, "n": 100, "alpha": 0.01, "seed": 0, "sigma": 0.25,
            "dataset": "synthetic", "split": "test"}.items() <= meta.items()
    assert len(meta["checkpoint_sha256"]) == 64


@pytest.mark.parametrize("flags,field", [(["--epsilon", "-0.5"], "epsilon"),
                                         (["--steps", "0"], "steps"),
                                         (["--m-test", "0"], "m_test")])
def test_cli_refuses_bad_values_in_one_line(synthetic_checkpoint, tmp_path, capsys, flags,
                                            field):
    out = tmp_path / "bad.tsv"
    assert main(attack_args(synthetic_checkpoint, out, *flags)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(f"smoothadv: error: {field}:")
    assert not out.exists()
