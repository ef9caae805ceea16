"""analysis/ and `smoothadv analyze`: hand-made certification files whose curves, envelopes,
per-σ grouping, representatives, ℓ∞ conversion, held-out split and bounds are known exactly."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from smoothadv.analysis import curves, figures
from smoothadv.analysis.gather import gather
from smoothadv.analysis.paper_results import (
    l2_radius_for_linf,
    parse_references,
    published_rows,
)
from smoothadv.analysis.report import Options, build_report
from smoothadv.cli.main import main
from smoothadv.common import layout, metrics
from smoothadv.common.errors import UserError

HEADER = ("idx", "label", "predict", "radius", "correct", "time", "pA_lower")
ABSTAIN, WRONG = "abstain", "wrong"


def certify_lines(radii: list, reference_format: bool = False) -> str:
    """TSV text: image i has label i % 4 and is certified correct with radius radii[i], or is
    an abstention, or a wrong prediction (radius 0.3)."""
    columns = HEADER[:-1] if reference_format else HEADER
    lines = ["\t".join(columns)]
    for i, r in enumerate(radii):
        label = i % 4
        if r == ABSTAIN:
            row = [i, label, -1, 0.0, 0, "0:00:01.500000", 0.31]
        elif r == WRONG:
            row = [i, label, (label + 1) % 4, 0.3, 0, "0:00:01.500000", 0.7]
        else:
            row = [i, label, label, r, 1, "0:00:01.500000", 0.9]
        lines.append("\t".join(str(v) for v in row[: len(columns)]))
    return "\n".join(lines) + "\n"


def write_trial(sweep: Path, name: str, params: dict, radii: list | None, *,
                config: dict | None = None, attack: str | None = None,
                tail: str = "", alpha: float = 0.001, dataset: str = "cifar10",
                planned: int | None = None) -> Path:
    """One trial folder of the sweep layout; ``radii`` None: not certified yet; ``planned``:
    the images of its certify_plan.json (None: as many as ``radii``, no plan file without
    them), which the trial worker writes before the first row."""
    folder = sweep / "trials" / name
    folder.mkdir(parents=True)
    layout.write_json(folder / "trial.json", {"name": name, "params": params})
    cfg = {"dataset": dataset, "arch": "cifar_resnet110", "method": "smoothadv",
           "certify": {"n0": 100, "n": 100000, "alpha": alpha, "batch_size": 400, "skip": 1,
                       "max": -1}, **params, **(config or {})}
    (folder / "config.yaml").write_text(json.dumps(cfg))  # JSON is YAML
    if radii is not None:
        (folder / "certify.tsv").write_text(certify_lines(radii) + tail)
        meta = {"format_version": 1, "sigma": cfg.get("sigma"), "n0": 100, "n": 100000,
                "alpha": alpha, "seed": 0, "dataset": dataset, "split": "test"}
        (folder / "certify.tsv.meta.json").write_text(json.dumps(meta))
    if attack is not None:
        (folder / "attack.tsv").write_text(attack)
    if planned is None and radii is not None:
        planned = len(radii)
    if planned is not None:
        layout.write_json(folder / "certify_plan.json", {"planned": planned})
    return folder


# Three trials of four images (idx 0-3):
#   A σ=.25: radii .3 .6 .1, one abstention   acc(0)=.75 acc(.25)=.5 acc(.5)=.25 ACR=.25
#   B σ=.25: radii 1.0, wrong, .25, .9        acc(0)=.75 acc(.25)=.75 acc(.5)=.5 acc(1)=.25
#                                              ACR=(1+.25+.9)/4=.5375
#   C σ=.5:  radii 2.0 .5, wrong, wrong       acc(0..0.5)=.5 acc(.75..2)=.25 ACR=.625
TRIALS = {
    "pgd-a-sigma0.25": ({"attack": "pgd", "steps": 2, "epsilon": 0.5, "sigma": 0.25},
                        [0.3, 0.6, 0.1, ABSTAIN]),
    "pgd-b-sigma0.25": ({"attack": "ddn", "steps": 10, "epsilon": 1.0, "sigma": 0.25},
                        [1.0, WRONG, 0.25, 0.9]),
    "pgd-c-sigma0.5": ({"attack": "pgd", "epsilon": 0.5, "sigma": 0.5},
                       [2.0, 0.5, WRONG, WRONG]),
}
A, B, C = TRIALS
ATTACK = ("idx\tlabel\tepsilon\tpredict\tcorrect\ttime\n"
          "0\t0\t0.25\t0\t1\t0:00:02\n1\t1\t0.25\t1\t1\t0:00:02\n"
          "0\t0\t0.5\t0\t1\t0:00:02\n1\t1\t0.5\t-1\t0\t0:00:02\n")


@pytest.fixture
def sweep(tmp_path) -> Path:
    root = tmp_path / "sweep"
    root.mkdir()
    (root / "sweep.yaml").write_text("name: sweep\ngrid: {sigma: [0.25, 0.5]}\n")
    for name, (params, radii) in TRIALS.items():
        write_trial(root, name, params, radii, attack=ATTACK if name == A else None,
                    planned=len(radii))
    return root


def test_certified_accuracy_counts_correct_images_at_or_beyond_the_radius():
    radius = np.array([0.3, 0.6, 0.1, 0.0, 0.25])
    ok = np.array([True, True, True, False, True])
    acc = metrics.certified_accuracy(radius, ok, [0.0, 0.1, 0.25, 0.3, 0.31, 0.6, 0.61])
    np.testing.assert_array_equal(acc, np.array([4, 4, 3, 2, 1, 1, 0]) / 5)
    assert np.isnan(metrics.certified_accuracy(np.array([]), np.array([], bool), [0.0])).all()
    # grid points are exact decimals, so a radius of exactly 0.25 counts at r = 0.25
    assert 0.25 in curves.radius_grid(0.3, 0.01) and 0.07 in curves.radius_grid(0.3, 0.01)
    assert curves.radius_grid(0.5, 0.25).tolist() == [0.0, 0.25, 0.5]


def test_trial_summary_gives_accuracy_acr_abstention_and_images(sweep):
    data = gather([sweep])
    s = curves.trial_summary(data.results, [0.0, 0.25, 0.5, 1.0, 2.0])
    assert s.loc[A, ["acc@0", "acc@0.25", "acc@0.5", "acc@1"]].tolist() == [.75, .5, .25, 0]
    assert s.loc[B, ["acc@0", "acc@0.25", "acc@0.5", "acc@1"]].tolist() == [.75, .75, .5, .25]
    assert s.loc[C, ["acc@0.5", "acc@1", "acc@2"]].tolist() == [.5, .25, .25]
    assert s["acr"].to_dict() == pytest.approx({A: 0.25, B: 0.5375, C: 0.625})
    assert s["abstain_rate"].tolist() == [0.25, 0, 0]
    assert s["clean_accuracy"].tolist() == [0.75, 0.75, 0.5]
    assert s["images"].tolist() == [4, 4, 4]


def test_envelope_takes_the_best_trial_and_breaks_ties_by_clean_accuracy(sweep):
    data = gather([sweep])
    env = curves.envelope(data.results, [0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 2.01])
    assert env["accuracy"].tolist() == [.75, .75, .5, .5, .25, .25, .25, 0]
    # r=0: A and B tie at .75 with equal clean accuracy → name; r=.5 and r=1: B ties C, but
    # B's clean accuracy is higher; r=2.01: all zero → highest clean accuracy, then name
    assert env["trial"].tolist() == [A, B, B, B, B, C, C, A]
    assert env["images"].tolist() == [4] * 8
    per_sigma = curves.envelope_per_sigma(data.results, data.certified, [0.0, 0.5, 1.0])
    assert per_sigma["sigma"].tolist() == [0.25] * 3 + [0.5] * 3
    assert per_sigma["accuracy"].tolist() == [.75, .5, .25, .5, .5, .25]
    assert per_sigma["trial"].tolist() == [A, B, B, C, C, C]


def test_representative_per_sigma_is_the_largest_acr():
    summary = pd.DataFrame({"acr": [0.25, 0.5375, 0.625, 0.5375],
                            "clean_accuracy": [0.75, 0.75, 0.5, 0.8]},
                           index=pd.Index(["a", "b", "c", "d"], name="trial"))
    trials = pd.DataFrame({"trial": ["a", "b", "c", "d"], "sigma": [0.25, 0.25, 0.5, 0.12]})
    rep = curves.representatives(summary, trials)
    assert rep.to_dict("list") == {"sigma": [0.12, 0.25, 0.5], "trial": ["d", "b", "c"]}


def test_linf_radius_follows_the_input_dimension():
    assert l2_radius_for_linf(2 / 255, "cifar10") == pytest.approx(0.4347, abs=1e-4)
    assert l2_radius_for_linf(1 / 255, "imagenet") == pytest.approx(math.sqrt(150528) / 255)
    assert l2_radius_for_linf(2 / 255, "synthetic") == pytest.approx(32 / 255)


def test_holdout_split_is_seeded_disjoint_and_halves_the_indices():
    choose, measure = curves.holdout_split([5, 3, 9, 3, 1, 7, 11])  # 6 distinct
    assert len(choose) == 3 and len(measure) == 3
    assert set(choose) | set(measure) == {1, 3, 5, 7, 9, 11}
    assert not set(choose) & set(measure)
    again = curves.holdout_split([1, 3, 5, 7, 9, 11])
    assert choose.tolist() == again[0].tolist() and measure.tolist() == again[1].tolist()
    other = [curves.holdout_split(range(100), seed=s)[0].tolist() for s in (1, 2)]
    assert other[0] != other[1]


def test_holdout_envelope_measures_the_chosen_trial_on_the_other_half(tmp_path):
    """X is right exactly on the selection half, Y exactly on the evaluation half: the plain
    max reports 0.5 for either; held-out selection picks X and measures 0 for it."""
    choose, measure = curves.holdout_split(range(20))
    root = tmp_path / "s"
    root.mkdir()
    (root / "sweep.yaml").write_text("name: s\n")
    write_trial(root, "x", {"sigma": 0.5}, [1.0 if i in choose else WRONG for i in range(20)])
    write_trial(root, "y", {"sigma": 0.5}, [1.0 if i in measure else WRONG for i in range(20)])
    results = gather([root]).results
    plain = curves.envelope(results, [0.0, 1.0, 1.5], "max")
    assert plain["accuracy"].tolist() == [0.5, 0.5, 0.0]
    held = curves.envelope(results, [0.0, 1.0, 1.5], "holdout")
    assert held["trial"].tolist() == ["x", "x", "x"]
    assert held["accuracy"].tolist() == [0.0, 0.0, 0.0]
    assert held["images"].tolist() == [10, 10, 10]
    # a trial certified on the evaluation half only is never chosen (nothing to choose it by)
    pd.testing.assert_frame_equal(
        curves.envelope(results[results["idx"].isin(measure) | (results["trial"] == "x")],
                        [1.0], "holdout"),
        pd.DataFrame({"radius": [1.0], "accuracy": [0.0], "trial": ["x"], "images": [10],
                      "chosen_on": [0], "common_only": [False]}),  # no common image in half A
        check_dtype=False)


def test_cohen_bound_matches_the_formula():
    log = math.log(1000)
    expected = 0.7 - 0.001 - math.sqrt(0.001 * 0.999 * log / 500) - log / 1500
    got = curves.cohen_lower_bound(np.array([0.7, 0.001]), np.array([500, 500]), 0.001, 0.001)
    assert got[0] == pytest.approx(expected, rel=1e-12) and expected == pytest.approx(0.6907, 1e-3)
    assert got[1] == 0.0  # clipped
    assert np.isnan(curves.cohen_lower_bound(np.array([0.5]), np.array([0]), 0.001))


def test_gather_reads_the_sweep_layout_into_one_tidy_table(sweep):
    data = gather([sweep])
    assert data.grid == ("attack", "steps", "epsilon", "sigma")  # the paper's order
    assert data.dataset == "cifar10"
    cert = data.results[data.results["kind"] == "certify"]
    assert len(cert) == 12 and set(cert["trial"]) == set(TRIALS)
    assert cert.loc[cert["trial"] == B, "attack"].unique().tolist() == ["ddn"]
    assert cert["time"].tolist() == ["0:00:01.500000"] * 12
    attack = data.results[data.results["kind"] == "attack"]
    assert attack["attack_epsilon"].tolist() == [0.25, 0.25, 0.5, 0.5]
    assert (attack["epsilon"] == 0.5).all()  # the trial's training ε stays its own column
    emp = curves.empirical_accuracy(data.results)
    assert emp["accuracy"].tolist() == [1.0, 0.5]


def test_partial_sweep_lists_missing_trials_and_ignores_a_torn_line(sweep, tmp_path, capsys):
    write_trial(sweep, "not-started", {"sigma": 1.0}, None)
    write_trial(sweep, "header-only", {"sigma": 1.0}, [])
    write_trial(sweep, "torn", {"sigma": 1.0}, [1.5, 1.5], tail="2\t2\t2\t1.")
    out = tmp_path / "report"
    assert main(["analyze", str(sweep), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "4 trials certified, 2 missing" in printed and "not-started" in printed
    table = pd.read_csv(out / "certified_accuracy.csv")
    assert table.set_index("trial").loc["torn", "images"] == 2
    md = (out / "tables.md").read_text()
    assert "| not-started | missing: no certify.tsv |" in md
    assert "| header-only | missing: certify.tsv has no rows yet |" in md
    assert "torn last line" in md and "torn/certify.tsv" in md
    # the torn row is not in the tidy table, and the file itself is left untouched
    assert (sweep / "trials/torn/certify.tsv").read_text().endswith("1.")


def test_report_files_tables_and_figures(sweep, tmp_path):
    out = tmp_path / "report"
    report = build_report([sweep], None, out, Options(radii=(0.4347,), references=("cohen",)))
    names = {p.name for p in report.files}
    for stem in ("envelope", "envelope_per_sigma", "representative_per_sigma",
                 "certified_accuracy_all"):
        assert (out / f"{stem}.png").read_bytes()[:4] == b"\x89PNG"
        assert (out / f"{stem}.pdf").read_bytes()[:4] == b"%PDF"
    assert {"results.parquet", "certified_accuracy.csv", "envelope.csv",
            "envelope_per_sigma.csv", "empirical_accuracy.csv", "tables.md",
            "tables.tex"} <= names
    assert not list(out.glob(".*.tmp"))

    results = pd.read_parquet(out / "results.parquet")
    assert len(results) == 12 + 4 and {"attack", "epsilon", "sigma", "radius"} <= set(results)

    table = pd.read_csv(out / "certified_accuracy.csv").set_index("trial")
    # every 0.25 up to the largest radius (2.0), plus the asked-for 0.4347
    radii = [c for c in table.columns if c.startswith("acc@")]
    assert radii == ["acc@0", "acc@0.25", "acc@0.4347", "acc@0.5", "acc@0.75", "acc@1",
                     "acc@1.25", "acc@1.5", "acc@1.75", "acc@2"]
    assert table.loc[B, "acc@0.4347"] == 0.5 and table.loc[A, "acc@0.4347"] == 0.25
    assert table.loc[A, ["attack", "steps", "epsilon", "sigma"]].tolist() == ["pgd", 2, 0.5, 0.25]
    assert np.isnan(table.loc[C, "steps"])  # C has no steps (e.g. Gaussian training)
    assert str(results["steps"].dtype) == "Int64"  # whole numbers stay whole in the parquet
    assert table.loc[C, "acr"] == pytest.approx(0.625)

    env = pd.read_csv(out / "envelope.csv")
    assert list(env.columns) == ["radius", "accuracy", "trial"]
    assert env["radius"].iloc[0] == 0 and np.allclose(np.diff(env["radius"]), 0.01)
    assert env["radius"].max() == pytest.approx(2.01)
    at = env.set_index(env["radius"].round(2))
    assert (at.loc[0.5, "accuracy"], at.loc[0.5, "trial"]) == (0.5, B)
    assert (at.loc[1.5, "accuracy"], at.loc[1.5, "trial"]) == (0.25, C)
    assert at.loc[2.01, "accuracy"] == 0
    assert env["accuracy"].between(0, 1).all()
    per_sigma = pd.read_csv(out / "envelope_per_sigma.csv")
    assert list(per_sigma.columns) == ["sigma", "radius", "accuracy", "trial"]
    assert set(per_sigma.loc[per_sigma["sigma"] == 0.5, "trial"]) == {C}

    md = (out / "tables.md").read_text()
    # Table 2 row at 0, 0.25 … 2.25 and Cohen's published row
    assert "| upper envelope (max over trials) | 75.0 | 75.0 | 50.0 | 50.0 | 25.0 | 25.0 | " \
           "25.0 | 25.0 | 25.0 | 0.0 |" in md
    assert "| Cohen et al. (published) | – | 61.0 | 43.0 | 32.0 | 22.0 |" in md
    # per σ: σ=0.25 beats σ=0.5 at r=0.25 (75 vs 50), bold
    assert "| 0.25 | **75.0** | **75.0** | **50.0** | **50.0** | **25.0** | 0.0 |" in md
    # ℓ∞ 2/255 → ℓ2 0.435: B and C both 0.5, B has the higher clean accuracy
    assert f"| 2/255 | 0.435 | 50.0 | {B} |" in md
    tex = (out / "tables.tex").read_text()
    assert r"\textbf{75.0}" in tex and r"pgd-b-sigma0.25" in tex and "$\\sigma$" in tex
    body = [ln for ln in tex.splitlines() if not ln.startswith("%")]
    assert all(ln.isascii() for ln in body)  # pdflatex-safe: symbols as LaTeX maths

    figs = report.figures
    lines = {k: f.axes[0].get_lines() for k, f in figs.items()}
    # envelope + Cohen's published points + the empirical-accuracy envelope
    assert [ln.get_label() for ln in lines["envelope"]][1:] == [
        "Cohen et al. (published)", "empirical accuracy under attack (x: attack ε)"]
    assert len(lines["envelope_per_sigma"]) == 2
    assert [ln.get_label() for ln in lines["representative_per_sigma"]] == [
        f"σ = 0.25: {B}", f"σ = 0.5: {C}"]
    assert len(lines["certified_accuracy_all"]) == 3 + 1
    for fig in figs.values():
        ax = fig.axes[0]
        assert ax.get_xlabel() and ax.get_ylabel() == "certified accuracy"
        assert ax.get_legend() is not None


def test_holdout_selection_draws_the_plain_max_beside_it(sweep, tmp_path):
    report = build_report([sweep], None, tmp_path / "r",
                          Options(selection="holdout", representative=(A,)))
    labels = [ln.get_label() for ln in report.figures["envelope"].axes[0].get_lines()]
    assert labels[1] == "max over trials (biased upwards)" and labels[0].startswith(
        "upper envelope, held-out")
    assert len(report.figures["representative_per_sigma"].axes[0].get_lines()) == 1


def test_mapping_file_adds_reference_format_logs(sweep, tmp_path):
    logs = tmp_path / "cohen"
    logs.mkdir()
    (logs / "noise_0.25.tsv").write_text(certify_lines([0.5, 0.5, 0.5, 0.5],
                                                       reference_format=True))
    (logs / "noise_1.00.tsv").write_text(certify_lines([3.0, WRONG], reference_format=True)
                                         + "2\t2\t2\t3.1")  # torn
    (tmp_path / "map.csv").write_text("path,sigma,method,label,dataset\n"
                                      "cohen/noise_0.25.tsv,0.25,gaussian,cohen-0.25,cifar10\n"
                                      "cohen/noise_1.00.tsv,1.0,gaussian,,\n")
    data = gather([sweep], tmp_path / "map.csv")
    assert data.grid == ("method", "attack", "steps", "epsilon", "sigma")
    assert data.certified["trial"].tolist()[-2:] == ["cohen-0.25", "cohen/noise_1.00.tsv"]
    assert data.certified.set_index("trial").loc["cohen-0.25", "alpha"] == 0.001
    assert data.torn == (str(tmp_path / "cohen/noise_1.00.tsv"),)
    env = curves.envelope(data.results, [0.5, 2.5])
    assert env["trial"].tolist() == ["cohen-0.25", "cohen/noise_1.00.tsv"]
    assert env["accuracy"].tolist() == [1.0, 0.5]
    # logs alone, without a sweep
    out = tmp_path / "r"
    assert main(["analyze", "--logs", str(tmp_path / "map.csv"), "-o", str(out)]) == 0
    assert len(pd.read_csv(out / "certified_accuracy.csv")) == 2


def test_several_sweeps_get_qualified_names(sweep, tmp_path):
    other = tmp_path / "other"
    write_trial(other, A, TRIALS[A][0], TRIALS[A][1])
    data = gather([sweep, other])
    assert f"other/{A}" in data.certified["trial"].tolist()
    assert f"sweep/{A}" in data.certified["trial"].tolist()


@pytest.mark.parametrize("setup, args, message", [
    (lambda t: (t / "plain").mkdir(), ["plain"], "plain: not a sweep folder"),
    (lambda t: None, [], "give at least one SWEEP_DIR"),
    (lambda t: write_trial(t / "s", "x", {"sigma": 0.5}, None), ["s"],
     "no trial has certification rows yet"),
    (lambda t: write_trial(t / "s", "x", {"sigma": 0.5}, [0.5]).joinpath("certify.tsv")
     .write_text("idx\tlabel\tpredict\tradius\n0\t0\t0\t0.5\n"), ["s"],
     "missing column(s) correct"),
    (lambda t: write_trial(t / "s", "x", {"sigma": 0.5}, [0.5]).joinpath("certify.tsv")
     .write_text("\t".join(HEADER[:5]) + "\n0\t0\t0\tbig\t1\n"),
     ["s"], "line 2: column radius is not a number"),
    (lambda t: (write_trial(t / "s", "x", {"sigma": 0.5}, [0.5]),
                write_trial(t / "s", "y", {"sigma": 0.5}, [0.5], dataset="synthetic")),
     ["s"], "several datasets"),
    (lambda t: write_trial(t / "s", "x", {"sigma": 0.5}, [0.5]),
     ["s", "--representative", "nope"], "--representative: no certified trial named 'nope'"),
    (lambda t: write_trial(t / "s", "x", {"sigma": 0.5}, [0.5]),
     ["s", "--reference", "cohen,bogus"], "--reference: unknown row 'bogus'"),
    (lambda t: write_trial(t / "s", "x", {"sigma": 0.5}, [0.5]),
     ["s", "--radii", "-1"], "--radii"),
    (lambda t: (t / "m.csv").write_text("path,sigma\nnowhere.tsv,0.5\n"),
     ["--logs", "m.csv"], "m.csv: line 2: path nowhere.tsv does not exist"),
    (lambda t: write_trial(t / "s", "x", {"sigma": 0.5}, [0.5]).joinpath("certify_plan.json")
     .write_text('{"format_version": 1, "planned": "ten"}'), ["s"],
     "x/certify_plan.json: planned: expected a whole number ≥ 0, got 'ten'"),
    (lambda t: write_trial(t / "s", "x", {"sigma": 0.5}, [0.5]).joinpath("certify_plan.json")
     .write_text('{"planned": 1'), ["s"], "x/certify_plan.json: malformed JSON"),
    (lambda t: write_trial(t / "s", "x", {"sigma": 0.5}, [0.5]).joinpath("certify_plan.json")
     .unlink(), ["s"], "x/certify.tsv: no certify_plan.json beside it"),
])
def test_bad_input_is_one_error_line_and_writes_nothing(tmp_path, capsys, monkeypatch,
                                                        setup, args, message):
    monkeypatch.chdir(tmp_path)
    setup(tmp_path)
    assert main(["analyze", *args, "-o", "report"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("smoothadv: error: ") and err.count("\n") == 1 and message in err
    assert not (tmp_path / "report").exists()


def test_published_rows_match_the_dataset():
    assert parse_references("cohen, smoothadv") == ("cohen", "smoothadv")
    assert parse_references(None) == ()
    rows = published_rows("imagenet", ("cohen", "smoothadv_both"))
    assert rows == [("Cohen et al. (published)", (0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5),
                     (0.49, 0.37, 0.29, 0.19, 0.15, 0.12, 0.09))]
    assert published_rows("synthetic", ("cohen",)) == []
    with pytest.raises(UserError, match="--reference"):
        parse_references("cohen,nope")


def test_figures_count_curves_per_sigma():
    per_sigma = pd.DataFrame({"sigma": [0.12, 0.12, 0.5, 0.5, 1.0, 1.0],
                              "radius": [0, 1] * 3, "accuracy": [0.8, 0.1, 0.6, 0.3, 0.4, 0.3]})
    fig = figures.per_sigma_figure(per_sigma, title="t")
    assert [ln.get_label() for ln in fig.axes[0].get_lines()] == [
        "σ = 0.12", "σ = 0.5", "σ = 1"]
    colors = [ln.get_color() for ln in fig.axes[0].get_lines()]
    assert len(set(map(tuple, colors))) == 3


def test_report_path_that_is_a_file_and_bad_rho_are_refused(sweep, tmp_path, capsys):
    (tmp_path / "taken").write_text("x")
    assert main(["analyze", str(sweep), "-o", str(tmp_path / "taken")]) == 2
    assert "taken: exists and is not a folder" in capsys.readouterr().err
    assert main(["analyze", str(sweep), "-o", str(tmp_path / "r"), "--rho", "1.5"]) == 2
    assert "--rho: must lie in (0, 1)" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


@pytest.fixture
def half_done(tmp_path) -> Path:
    """"done": all 4 planned images, mediocre (acc(0)=.5, nothing beyond radius .3);
    "partial": 3 of 10 planned images, all certified at radius 2 (would top every radius)."""
    root = tmp_path / "half"
    root.mkdir()
    (root / "sweep.yaml").write_text("name: half\n")
    write_trial(root, "done", {"sigma": 0.25}, [0.3, WRONG, 0.2, ABSTAIN], planned=4)
    write_trial(root, "partial", {"sigma": 0.5}, [2.0, 2.0, 2.0], planned=10)
    return root


def test_incomplete_trial_stays_out_of_envelopes_tables_and_figures(half_done, tmp_path,
                                                                     capsys):
    write_trial(half_done, "queued", {"sigma": 0.5}, None, planned=10)  # planned, no rows
    out = tmp_path / "report"
    assert main(["analyze", str(half_done), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "  partial: incomplete, 3/10 images\n" in printed
    assert "  queued: missing: no certify.tsv\n" in printed
    assert "1 trials certified, 1 missing, 1 incomplete (left out)" in printed
    env = pd.read_csv(out / "envelope.csv")
    assert set(env["trial"]) == {"done"} and env["accuracy"].max() == 0.5
    assert set(pd.read_csv(out / "envelope_per_sigma.csv")["sigma"]) == {0.25}
    table = pd.read_csv(out / "certified_accuracy.csv")
    assert table["trial"].tolist() == ["done"] and table["complete"].tolist() == [True]
    assert set(pd.read_parquet(out / "results.parquet")["trial"]) == {"done"}
    md = (out / "tables.md").read_text()
    assert "| partial | incomplete, 3/10 images |" in md
    assert md.count("partial") == 1  # only in the left-out list
    report = build_report([half_done], None, tmp_path / "again", Options())
    labels = [ln.get_label() for f in report.figures.values() for ln in f.axes[0].get_lines()]
    assert not any("partial" in str(label) for label in labels)
    assert len(report.figures["certified_accuracy_all"].axes[0].get_lines()) == 1 + 1


def test_include_incomplete_draws_them_marked(half_done, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["analyze", str(half_done), "-o", str(out), "--include-incomplete"]) == 0
    printed = capsys.readouterr().out
    assert "2 trials certified (1 of them incomplete, drawn by --include-incomplete" in printed
    marked = "partial (incomplete 3/10)"
    env = pd.read_csv(out / "envelope.csv")
    assert env.set_index(env["radius"].round(2)).loc[1.0, "trial"] == marked
    table = pd.read_csv(out / "certified_accuracy.csv").set_index("trial")
    assert table["complete"].to_dict() == {"done": True, marked: False}
    md = (out / "tables.md").read_text()
    assert f"| {marked} | 0.5 | **100.0** |" in md  # every-trial table
    assert "incomplete, 3/10 images" not in md  # drawn, so not in the left-out list


def test_logs_count_as_complete_and_a_trial_without_its_plan_is_refused(half_done, tmp_path):
    """Logs of a --logs mapping have no plan (the planned count would need the dataset's
    size), so they count as complete; a sweep trial's certify.tsv without its
    certify_plan.json (the trial worker writes it before the first row) is refused."""
    (tmp_path / "log.tsv").write_text(certify_lines([0.5], reference_format=True))
    (tmp_path / "map.csv").write_text("path,sigma,label\nlog.tsv,0.5,cohen\n")
    data = gather([half_done], tmp_path / "map.csv")
    trials = data.trials.set_index("trial")
    assert trials.loc[["done", "cohen"], "status"].tolist() == ["ok"] * 2
    assert trials.loc[["done", "cohen"], "complete"].tolist() == [True] * 2
    assert trials["planned"].isna().tolist() == [False, False, True]
    assert trials.loc["partial", ["complete", "status"]].tolist() == [
        False, "incomplete, 3/10 images"]
    assert set(data.results["trial"]) == {"done", "cohen"}
    older = write_trial(half_done, "older", {"sigma": 1.0}, [1.0, 1.0])
    (older / "certify_plan.json").unlink()
    with pytest.raises(UserError, match="no certify_plan.json") as refused:
        gather([half_done], tmp_path / "map.csv")
    assert str(refused.value).startswith(str(older / "certify.tsv"))
    assert "\n" not in str(refused.value)


def test_only_incomplete_trials_is_an_error_naming_the_flag(tmp_path, capsys):
    root = tmp_path / "s"
    write_trial(root, "x", {"sigma": 0.5}, [1.0], planned=5)
    write_trial(root, "y", {"sigma": 0.5}, [], planned=5)
    assert main(["analyze", str(root), "-o", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "no trial has finished certification yet (1 incomplete, 1 missing)" in err
    assert "--include-incomplete" in err and not (tmp_path / "r").exists()


def test_a_staged_sweeps_stopped_trials_and_sequential_target_radius_are_reported(tmp_path):
    """A trial a staged sweep did not certify in full is left out with its stage and reason,
    and a sequential target radius is said (accuracies beyond it are lower bounds)."""
    sweep = tmp_path / "staged"
    sweep.mkdir()
    (sweep / "sweep.yaml").write_text("name: staged\ngrid: {sigma: [0.25]}\n")
    kept = write_trial(sweep, "kept", {"sigma": 0.25}, [0.3, 0.6, 0.1, ABSTAIN])
    meta = json.loads((kept / "certify.tsv.meta.json").read_text())
    meta.update(sequential=True, target_radius=0.5)
    (kept / "certify.tsv.meta.json").write_text(json.dumps(meta))
    write_trial(sweep, "pruned", {"sigma": 0.25}, None)
    layout.write_json(sweep / "stages.json", {"stage": 4, "trials": {
        "kept": {"stage": 2, "why": ""},
        "pruned": {"stage": 1, "why": "dominated at every radius: best upper 0.2"}}})
    data = gather([sweep])
    assert data.target_radius == 0.5
    status = data.trials.set_index("trial")["status"]
    assert status["pruned"] == "stopped at stage 1: dominated at every radius: best upper 0.2"
    report = build_report([sweep], None, tmp_path / "report")
    assert any("pruned: stopped at stage 1: dominated" in line for line in report.summary)
    assert any("Certified sequentially up to radius 0.5" in line for line in report.summary)


# --- staged certification: chosen on the common images, reported on the winner's own rows ---
# Images 0-19 are the "full test set", every 4th (0, 4, 8, 12, 16) the planned images every
# trial of a staged sweep has; stage 3's winners also have the other 15.
FULL, COMMON = list(range(20)), list(range(0, 20, 4))


def staged_rows(trial: str, right: dict[int, float], images: list[int]) -> pd.DataFrame:
    """Hand-made certify rows of ``trial`` on ``images``: image i right with radius right[i]
    where given, else wrong."""
    ok = [i in right for i in images]
    return pd.DataFrame({"trial": trial, "kind": "certify", "idx": images, "label": 1,
                         "predict": [1 if v else 2 for v in ok],
                         "radius": [right.get(i, 0.3) for i in images],
                         "correct": [int(v) for v in ok]})


def staged_results() -> pd.DataFrame:
    """w (σ .25, full rows): on the common images .8 at r ≤ 1, on all 20 .5.
    s (σ .25, common only): .6 at r ≤ 1 — above w's full-test .5, below w's common .8.
    v (σ .25, common only): .2 at r ≤ 2, nothing else (wins only beyond r = 1).
    x (σ .5, full rows): common .6, all 20 .2.   y (σ .5, common only): .4."""
    return pd.concat([
        staged_rows("w", dict.fromkeys([0, 4, 8, 12, 1, 2, 3, 5, 6, 7], 1.0), FULL),
        staged_rows("s", dict.fromkeys([0, 4, 8], 1.0), COMMON),
        staged_rows("v", {16: 2.0}, COMMON),
        staged_rows("x", dict.fromkeys([0, 4, 8, 1], 1.0), FULL),
        staged_rows("y", dict.fromkeys([0, 4], 1.0), COMMON)], ignore_index=True)


STAGED_SIGMA = pd.DataFrame({"trial": list("wsvxy"), "sigma": [0.25] * 3 + [0.5] * 2})


def test_the_envelope_chooses_on_the_common_images_and_reports_the_winners_own_rows():
    """At r = .5 s's .6 (5 images) beats w's full-test .5 (20 images): a max over the mix
    would report s's .6; w wins on the common images (.8 > .6), so its full-test .5 is
    reported, on 20 images. Beyond r = 1 only v (common rows only) certifies anything: its
    .2 is reported on the common images and flagged."""
    results = staged_results()
    assert curves.common_images(results).tolist() == COMMON
    env = curves.envelope(results, [0.0, 0.5, 1.5, 2.5])
    assert env["trial"].tolist() == ["w", "w", "v", "w"]  # r = 2.5: all 0, w's clean .8
    assert env["accuracy"].tolist() == [0.5, 0.5, 0.2, 0.0]
    assert env["images"].tolist() == [20, 20, 5, 20]
    assert env["chosen_on"].tolist() == [5] * 4
    assert env["common_only"].tolist() == [False, False, True, False]
    assert env.loc[1, "accuracy"] < 0.6  # not the mixed max, s's subset .6


def test_the_per_sigma_envelope_chooses_per_sigma_on_the_common_images():
    per_sigma = curves.envelope_per_sigma(staged_results(), STAGED_SIGMA, [0.5, 1.5])
    got = per_sigma[["sigma", "trial", "accuracy", "images", "common_only"]]
    assert got.values.tolist() == [[0.25, "w", 0.5, 20, False], [0.25, "v", 0.2, 5, True],
                                   # σ .5: x (.6 > .4 on the common images), its full .2
                                   [0.5, "x", 0.2, 20, False], [0.5, "x", 0.0, 20, False]]


def test_a_winner_without_full_rows_is_reported_on_the_common_images_and_flagged():
    """Stage 3 not run for anyone: every trial has the common images only, nothing is
    flagged (there are no full-test rows to miss) and the envelope is the plain max. Once w
    has its full rows, s (best on the common images) is reported on them, flagged."""
    only_common = pd.concat([staged_rows("w", dict.fromkeys([0, 4], 1.0), COMMON),
                             staged_rows("s", dict.fromkeys([0, 4, 8], 1.0), COMMON)])
    env = curves.envelope(only_common, [0.5])
    assert env[["trial", "accuracy", "images", "common_only"]].values.tolist() == [
        ["s", 0.6, 5, False]]
    mixed = pd.concat([staged_rows("w", dict.fromkeys([0, 4, *range(1, 16, 4)], 1.0), FULL),
                       staged_rows("s", dict.fromkeys([0, 4, 8], 1.0), COMMON)])
    env = curves.envelope(mixed, [0.5])  # w: .4 common, .3 full; s: .6 common
    assert env[["trial", "accuracy", "images", "common_only"]].values.tolist() == [
        ["s", 0.6, 5, True]]


def test_holdout_chooses_on_the_common_images_of_the_selection_half():
    """w (full rows) is right on every common image, wrong on its other rows; s (common rows
    only) is right on every common image but one of the selection half. On its own rows of
    the selection half s looks best; on the common ones w does, and is measured on its rows
    of the evaluation half."""
    full, common = list(range(40)), list(range(0, 40, 4))
    choose, measure = curves.holdout_split(full)
    missed = sorted(set(common) & set(choose))[0]
    results = pd.concat([
        staged_rows("w", dict.fromkeys(common, 1.0), full),
        staged_rows("s", {i: 1.0 for i in common if i != missed}, common)])
    env = curves.envelope(results, [0.5], "holdout")
    assert env["trial"].tolist() == ["w"]
    assert env["chosen_on"].tolist() == [len(set(common) & set(choose))]
    assert env["images"].tolist() == [len(measure)]
    assert env["accuracy"].tolist() == [len(set(common) & set(measure)) / len(measure)]
    assert env["common_only"].tolist() == [False]


def write_staged_trial(sweep: Path, name: str, right: dict[int, float], images: list[int],
                       planned: int) -> None:
    """A trial of a staged sweep whose stage 2 certified every 4th image (certify.skip 4)."""
    folder = write_trial(sweep, name, {"sigma": 0.25}, [], planned=planned, config={
        "certify": {"n0": 100, "n": 100000, "alpha": 0.001, "skip": 4, "max": -1}})
    rows = staged_rows(name, right, images)
    rows["time"], rows["pA_lower"] = "0:00:01.500000", 0.9
    rows[list(HEADER)].to_csv(folder / "certify.tsv", sep="\t", index=False)


def test_a_staged_sweeps_report_shows_where_each_point_was_chosen_and_reported(tmp_path):
    """w went through stage 3 (20 rows), s stopped at stage 2 (the 5 planned images), v is
    still in stage 3 (3 of its 20 rows so far): v is drawn on stage 2's images and said to be
    unfinished; the headline reports w's full-test value, never s's higher subset one."""
    sweep = tmp_path / "staged"
    sweep.mkdir()
    (sweep / "sweep.yaml").write_text("name: staged\n")
    write_staged_trial(sweep, "w", dict.fromkeys([0, 4, 8, 12, 1, 2, 3, 5, 6, 7], 1.0), FULL,
                       planned=20)
    write_staged_trial(sweep, "s", dict.fromkeys([0, 4, 8], 1.0), COMMON, planned=5)
    write_staged_trial(sweep, "v", {16: 2.0, 1: 2.0, 2: 2.0}, [*COMMON, 1, 2, 3], planned=20)
    layout.write_json(sweep / "stages.json", {"stage": 3, "trials": {
        "w": {"stage": 3, "why": ""}, "s": {"stage": 2, "why": "not on the envelope at full n"},
        "v": {"stage": 3, "why": ""}}})
    data = gather([sweep])
    assert data.unfinished == ("v",)
    trials = data.trials.set_index("trial")
    assert trials["status"].tolist() == ["ok"] * 3 and trials.loc["v", "images"] == 5
    assert pd.isna(trials.loc["v", "planned"]) and trials.loc["v", "complete"]
    v_rows = data.results[data.results["trial"] == "v"]
    assert sorted(v_rows["idx"]) == COMMON  # its partial stage-3 rows are left out
    report = build_report([sweep], None, tmp_path / "report")
    md = (tmp_path / "report" / "tables.md").read_text()
    assert "| upper envelope (max over trials) | 50.0 | 50.0 | 50.0 | 50.0 | 50.0 | 20.0 |" in md
    assert "| 1.50 | v | 5 | 5 | yes |" in md and "| 0.50 | w | 5 | 20 |  |" in md
    assert "max: 4 point(s) reported on the common images only" in md
    assert "(5 common to all)" in md and "stage 3 has not finished for 1 trial(s) (v)" in md
    assert any("r=0.25: 0.500 (w)" in line for line in report.summary)


def test_a_stage3_trials_damaged_certify_block_is_one_error_line(tmp_path, capsys):
    sweep = tmp_path / "staged"
    write_trial(sweep, "w", {"sigma": 0.25}, [0.5], planned=4,
                config={"certify": {"alpha": 0.001, "skip": "x"}})
    layout.write_json(sweep / "stages.json", {"stage": 3, "trials": {
        "w": {"stage": 3, "why": ""}}})
    assert main(["analyze", str(sweep), "-o", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "w/config.yaml: certify.skip: expected a whole number" in err
