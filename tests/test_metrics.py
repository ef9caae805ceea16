"""common.metrics: each metric is computed once, so the trial's final report, the CLI summary
and the analysis agree exactly on the same certification (and attack) file."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from smoothadv.analysis import curves
from smoothadv.analysis.gather import gather
from smoothadv.cli.smoothing import print_summary
from smoothadv.common import metrics
from smoothadv.sweep import trial_worker
from test_analysis import write_trial

RADII = (0.0, 0.25, 0.5, 0.75, 1.0)


def irregular_radii(count: int) -> list:
    """Radii with many digits (so that the order of summation could show in the ACR), some
    abstentions and some wrong predictions."""
    rng = np.random.default_rng(7)
    out = []
    for r in rng.uniform(0, 1.3, count):
        kind = rng.integers(6)
        out.append("abstain" if kind == 0 else "wrong" if kind == 1 else float(r))
    return out


ATTACK = ("idx\tlabel\tepsilon\tpredict\tcorrect\ttime\n"
          "0\t0\t0.25\t0\t1\t0:00:02\n1\t1\t0.25\t1\t1\t0:00:02\n2\t2\t0.25\t3\t0\t0:00:02\n"
          "0\t0\t0.5\t0\t1\t0:00:02\n1\t1\t0.5\t-1\t0\t0:00:02\n2\t2\t0.5\t-1\t0\t0:00:02\n")


def test_trial_report_cli_summary_and_analysis_agree_on_one_file(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "sweep.yaml").write_text("name: sweep\ngrid: {sigma: [0.25]}\n")
    folder = write_trial(sweep, "t", {"sigma": 0.25}, irregular_radii(301), attack=ATTACK)
    rows = pd.read_csv(folder / "certify.tsv", sep="\t")

    trial = trial_worker.certified_summary(rows)  # what certify_trial reports
    analysis = curves.trial_summary(gather([sweep]).results, RADII).loc["t"]
    for r in RADII:
        assert trial[f"cert_acc_{r:g}"] == analysis[f"acc@{r:g}"]
    assert trial["acr"] == analysis["acr"]
    assert trial["abstain"] == analysis["abstain_rate"]
    assert trial["certified_images"] == analysis["images"] == 301
    assert trial["cert_acc_0"] == analysis["clean_accuracy"] == metrics.accuracy(
        metrics.right_rows(rows))
    # the definitions, spelled out once more
    ok = (rows["correct"] == 1) & (rows["predict"] >= 0)
    assert trial["acr"] == pytest.approx((rows["radius"] * ok).sum() / len(rows), rel=1e-12)
    assert trial["cert_acc_0.5"] == ((rows["radius"] >= 0.5) & ok).sum() / len(rows)
    assert trial["abstain"] == (rows["predict"] == -1).sum() / len(rows)

    print_summary(folder / "certify.tsv", certifying=True)
    printed = capsys.readouterr().out
    assert (f"301 images, accuracy {trial['cert_acc_0']:.3f}, average certified radius "
            f"{trial['acr']:.3f}, abstained {trial['abstain']:.3f}") in printed

    attack = metrics.empirical_accuracy(pd.read_csv(folder / "attack.tsv", sep="\t"))
    assert attack["accuracy"].to_dict() == {0.25: 2 / 3, 0.5: 1 / 3}
    assert attack["images"].tolist() == [3, 3]
    emp = curves.empirical_accuracy(gather([sweep]).results)
    assert emp["accuracy"].tolist() == attack["accuracy"].tolist()
    assert emp["images"].tolist() == attack["images"].tolist()


def test_metrics_of_no_rows():
    assert np.isnan(metrics.accuracy(np.array([], bool)))
    assert np.isnan(metrics.average_certified_radius(np.array([]), np.array([], bool)))
    assert np.isnan(metrics.abstention_rate(np.array([])))
    empty = pd.DataFrame({c: [] for c in ("idx", "label", "predict", "radius", "correct")})
    assert metrics.certified_summary(empty) == {}
