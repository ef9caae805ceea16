"""Envelope-aware early stopping (issue 15 part 3, sweep.early_stopping): the decision per σ, its
bookkeeping, the spec block, and one tiny real sweep in which an untrained trial is stopped
after its rung while the trained one runs to the end."""

from __future__ import annotations

import json
import math
import pickle
import random
from types import SimpleNamespace

import pandas as pd
import pytest
import yaml
from smoothadv.common import layout
from smoothadv.common.envelope import best_by_radius
from smoothadv.common.errors import UserError
from smoothadv.common.schedule_file import stopped_trials
from smoothadv.sweep.early_stopping import EnvelopeScheduler, Rungs, dominated
from smoothadv.sweep.spec import parse_spec
from smoothadv.sweep.spec_blocks import EarlyStopping

RADII = (0.0, 0.25, 0.5)


def curve(*accs: float) -> dict[float, float]:
    return dict(zip(RADII, accs, strict=True))


def book(margin: float = 0.05, min_trials: int = 2) -> Rungs:
    return Rungs(margin, min_trials)


# --- the decision -------------------------------------------------------------------------


def test_a_curve_below_the_envelope_by_the_margin_at_every_radius_is_dominated():
    assert dominated(curve(0.2, 0.1, 0.0), [curve(0.9, 0.7, 0.3)], 0.05)
    # the envelope is the pointwise maximum: each radius by whichever peer is best there
    assert dominated(curve(0.2, 0.1, 0.0), [curve(0.9, 0.0, 0.0), curve(0.0, 0.7, 0.3)], 0.05)
    rungs = book()
    rungs.record("good", 0.25, 1, 3, curve(0.9, 0.7, 0.3))
    rungs.record("bad", 0.25, 1, 3, curve(0.25, 0.1, 0.0))
    why = rungs.verdict("bad")
    assert why.startswith("dominated at rung 1 (epoch 3) by σ=0.25's envelope by ≥ 0.05 at "
                          "every radius (r=0: 0.250 < 0.900"), why
    assert rungs.verdict("good") is None


@pytest.mark.parametrize("sigma,own", [
    (0.5, (0.87, 0.67, 0.27)),  # 0.03 below the envelope everywhere: not "by the margin"
    (1.0, (0.3, 0.2, 0.35)),  # far worse at r = 0, 0.25, the best of its σ at 0.5: on the envelope
], ids=["near-tie-within-the-margin", "best-at-one-radius"])
def test_a_trial_not_dominated_by_the_margin_at_every_radius_goes_on(sigma, own):
    assert not dominated(curve(*own), [curve(0.9, 0.7, 0.3)], 0.05)
    rungs = book()
    rungs.record("peer", sigma, 1, 2, curve(0.9, 0.7, 0.3))
    rungs.record("own", sigma, 1, 2, curve(*own))
    assert rungs.verdict("own") is None


def test_a_large_sigma_trial_is_never_stopped_by_small_sigma_trials():
    # σ = 1 is worse than σ = 0.25 at every radius listed here, as a large σ is at small radii
    rungs = book()
    rungs.record("small", 0.25, 1, 2, curve(0.9, 0.8, 0.6))
    rungs.record("wide", 1.0, 1, 2, curve(0.5, 0.45, 0.4))
    assert rungs.verdict("wide") is None  # alone in its σ: min_trials is not met there
    # with a σ = 1 peer better at r = 0 only, it holds its σ's envelope at 0.25 and 0.5
    rungs.record("wide2", 1.0, 1, 2, curve(0.6, 0.4, 0.3))
    assert rungs.verdict("wide") is None
    assert rungs.verdict("wide2") is None  # best of its σ at r = 0


def test_min_trials_same_sigma_trials_must_report_the_rung_before_it_decides():
    rungs = book(min_trials=3)
    rungs.record("good", 0.25, 1, 2, curve(0.9, 0.7, 0.3))
    rungs.record("bad", 0.25, 1, 2, curve(0.2, 0.1, 0.0))
    rungs.record("other-sigma", 0.5, 1, 2, curve(0.9, 0.7, 0.3))  # does not count
    rungs.record("early", 0.25, 2, 4, curve(0.95, 0.8, 0.4))  # not at rung 1 yet
    assert rungs.verdict("bad") is None
    rungs.record("early", 0.25, 1, 2, curve(0.95, 0.8, 0.4))
    assert rungs.verdict("bad").startswith("dominated at rung 1 (epoch 2)")


def test_a_trial_is_judged_on_its_latest_rung_that_enough_peers_reported():
    rungs = book()
    rungs.record("bad", 0.25, 1, 1, curve(0.2, 0.1, 0.0))
    assert rungs.verdict("bad") is None  # alone at the rung: goes on
    rungs.record("good", 0.25, 1, 1, curve(0.9, 0.7, 0.3))
    assert rungs.verdict("bad").startswith("dominated at rung 1")  # the peer is there now
    rungs.record("bad", 0.25, 2, 2, curve(0.2, 0.1, 0.0))
    assert rungs.verdict("bad").startswith("dominated at rung 1")  # ahead: still rung 1
    rungs.record("good", 0.25, 2, 2, curve(0.22, 0.12, 0.0))
    assert rungs.verdict("bad") is None  # rung 2, newer, says it caught up: it goes on


def test_the_bookkeeping_round_trips_through_its_record():
    rungs = book()
    rungs.record("good", 0.25, 1, 1, curve(0.9, 0.7, 0.3))
    rungs.record("bad", 0.25, 1, 1, curve(0.2, 0.1, 0.0))
    assert rungs.stop("bad") == rungs.verdict("bad")
    again = Rungs(0.05, 2, json.loads(json.dumps(rungs.to_dict())))
    assert again.trials == rungs.trials and again.stopped == rungs.stopped
    assert again.verdict("bad") == rungs.stopped["bad"]["why"]  # stopped stays stopped


def test_every_reader_of_the_record_skips_the_same_malformed_stopped_entries(tmp_path):
    record = {"format_version": layout.RECORD_VERSION,
              "stopped": {"bad": {"why": "dominated"}, "torn": "?", "none": None}}
    (tmp_path / "schedule.json").write_text(json.dumps(record))
    assert stopped_trials(tmp_path) == {"bad": "dominated"}
    rungs = Rungs(0.05, 2, record)
    assert set(rungs.stopped) == {"bad"} and rungs.verdict("torn") is None


# --- the Tune scheduler, without a cluster ------------------------------------------------


def _result(epoch: int, rung: int | None = None, accs: tuple[float, ...] = ()) -> dict:
    out = {"epoch": epoch, "train_loss": 1.0}
    if rung is not None:
        out.update({"proxy_rung": rung, **{f"proxy_cert_acc_{r:g}": a
                                           for r, a in zip(RADII, accs, strict=True)}})
    return out


def test_the_scheduler_records_why_and_marks_the_trial_never_stopping_its_actor(tmp_path):
    """The decision goes into schedule.json (which the trial's workers read after each epoch)
    and state.json; Tune's STOP is never returned (it would strand the workers' resources)."""
    settings = EarlyStopping(margin=0.05, min_trials=2).record()
    scheduler = EnvelopeScheduler(str(tmp_path), settings)
    good = SimpleNamespace(trial_id="a",
                           config={"trial": {"name": "good", "config": {"sigma": 0.25}}})
    bad = SimpleNamespace(trial_id="b",
                          config={"trial": {"name": "bad", "config": {"sigma": 0.25}}})
    alone = SimpleNamespace(get_trials=lambda: [], stop_trial=None)  # no running peers
    state = layout.trial_dir(tmp_path, "bad") / layout.STATE
    layout.write_json(state, {"state": "RUNNING", "trial_id": "b", "started_at": 1.0})
    assert scheduler.on_trial_result(alone, bad, _result(0, 1, (0.2, 0.1, 0.0))) == "CONTINUE"
    assert scheduler.on_trial_result(alone, good, _result(0, 1, (0.9, 0.7, 0.3))) == "CONTINUE"
    assert scheduler.on_trial_result(alone, good, _result(1)) == "CONTINUE"
    # pickled with the Tuner (a restore): its state comes back from schedule.json
    restored = pickle.loads(pickle.dumps(scheduler))
    assert restored._rungs is None
    assert restored.on_trial_result(alone, bad, _result(1)) == "CONTINUE"
    why = stopped_trials(tmp_path)["bad"]
    assert why.startswith("dominated at rung 1 (epoch 1) by σ=0.25's envelope")
    record = json.loads((tmp_path / layout.SCHEDULE).read_text())
    assert record["trials"]["good"]["rungs"]["1"]["curve"] == {"0": 0.9, "0.25": 0.7, "0.5": 0.3}
    assert record["settings"]["margin"] == 0.05
    marked = json.loads(state.read_text())
    assert marked["state"] == "STOPPED" and marked["why"] == why
    assert marked["trial_id"] == "b" and marked["started_at"] == 1.0
    # the final certification's report is never judged; a stopped trial stays stopped
    assert restored.on_trial_result(alone, good, {"acr": 0.5}) == "CONTINUE"
    assert restored.on_trial_result(alone, bad, _result(2)) == "CONTINUE"
    assert set(stopped_trials(tmp_path)) == {"bad"}


def test_a_rung_report_judges_the_running_peers_it_dominates_at_once(tmp_path):
    scheduler = EnvelopeScheduler(str(tmp_path), EarlyStopping(min_trials=2).record())

    def trial(name, sigma, status="RUNNING"):
        return SimpleNamespace(trial_id=name, status=status,
                               config={"trial": {"name": name, "config": {"sigma": sigma}}})

    bad, wide, done, good = (trial("bad", 0.25), trial("wide", 0.5),
                             trial("done", 0.25, "TERMINATED"), trial("good", 0.25))
    stopped = []
    controller = SimpleNamespace(get_trials=lambda: [bad, wide, done, good],
                                 stop_trial=stopped.append)
    for t, accs in ((bad, (0.2, 0.1, 0.0)), (wide, (0.1, 0.1, 0.1)), (done, (0.1, 0.0, 0.0))):
        assert scheduler.on_trial_result(controller, t, _result(0, 1, accs)) == "CONTINUE"
    assert stopped == []  # each alone at the rung in its σ when it reported
    # the good trial's rung: the bad one (σ 0.25, running) is judged now, not at its next
    # result (its workers read the record); σ 0.5 is another group, a finished trial is left
    assert scheduler.on_trial_result(controller, good, _result(0, 1, (0.9, 0.7, 0.3))) == \
        "CONTINUE"
    assert set(stopped_trials(tmp_path)) == {"bad"}
    assert stopped == []  # never through Tune's stop_trial


def test_a_trial_whose_training_ended_is_never_stopped(tmp_path):
    """Stopping a trial that trained in full, or certifies, saves nothing and would throw its
    final model away: only trials still training are judged."""
    scheduler = EnvelopeScheduler(str(tmp_path), EarlyStopping(min_trials=2).record())

    def trial(name, last_result):
        return SimpleNamespace(trial_id=name, status="RUNNING", last_result=last_result,
                               config={"trial": {"name": name,
                                                 "config": {"sigma": 0.25, "epochs": 3}}})

    trained, certifying, training = (trial("trained", {"epoch": 2}),
                                     trial("certifying", {"acr": 0.1}),
                                     trial("training", {"epoch": 1}))
    good = trial("good", {})
    controller = SimpleNamespace(get_trials=lambda: [trained, certifying, training, good])
    for t in (trained, certifying, training):
        scheduler.on_trial_result(controller, t, _result(0, 1, (0.2, 0.1, 0.0)))
    assert stopped_trials(tmp_path) == {}  # (each dominated by none yet: equal curves)
    scheduler.on_trial_result(controller, good, _result(0, 1, (0.9, 0.7, 0.3)))
    assert set(stopped_trials(tmp_path)) == {"training"}
    scheduler.on_trial_result(controller, trained, _result(2))  # its last epoch's report
    assert set(stopped_trials(tmp_path)) == {"training"}


def test_the_indexed_bookkeeping_decides_as_the_rule_over_all_peers():
    """Rungs keeps the two best accuracies per (σ, rung, radius); its verdicts equal the rule
    applied to every same-σ peer's curve (ties, re-recorded rungs and σ up to rounding)."""
    rng = random.Random(7)
    for _ in range(200):
        margin, min_trials = rng.choice([0.0, 0.05, 0.1]), rng.choice([2, 3])
        rungs, seen = Rungs(margin, min_trials), {}
        for _ in range(rng.randrange(2, 14)):
            name = f"t{rng.randrange(8)}"
            sigma = seen.setdefault(name, rng.choice([0.25, 0.5, 0.25 + 1e-12]))
            curve = {r: rng.choice([0.0, 0.1, 0.3, 0.5]) for r in RADII if rng.random() < 0.9}
            rungs.record(name, sigma, rng.choice([1, 2]), 1, curve)
            rungs.verdict(rng.choice(sorted(seen)))  # (its index then updates as it grows)
        for name, entry in rungs.trials.items():
            peers = {k: [e["rungs"][k]["curve"] for other, e in rungs.trials.items()
                         if other != name and abs(e["sigma"] - entry["sigma"]) < 1e-9
                         and k in e["rungs"]] for k in entry["rungs"]}
            decidable = [k for k in sorted(peers, reverse=True) if 1 + len(peers[k]) >= min_trials]
            expected = bool(decidable) and dominated(entry["rungs"][decidable[0]]["curve"],
                                                     peers[decidable[0]], margin)
            assert (rungs.verdict(name) is not None) == expected
            assert Rungs(margin, min_trials, rungs.to_dict()).verdict(name) == rungs.verdict(name)


def test_the_index_gives_the_common_envelope_of_the_peers():
    """Rungs.others_envelope, read off its two-best index, is common.envelope.best_by_radius
    of the other same-σ curves of the rung (ties, missing radii, NaN, re-recorded rungs)."""
    rng = random.Random(11)
    for _ in range(300):
        rungs, sigmas = Rungs(0.05, 2), {}
        for _ in range(rng.randrange(1, 12)):
            name = f"t{rng.randrange(6)}"
            curve = {r: rng.choice([0.0, 0.3, 0.3, 0.5, math.nan]) for r in RADII
                     if rng.random() < 0.8}
            rungs.record(name, sigmas.setdefault(name, rng.choice([0.25, 0.5])),
                         rng.choice([1, 2]), 1, curve)
            if rng.random() < 0.5:  # (the index is built, then kept up to date)
                rungs.others_envelope(rng.choice(sorted(rungs.trials)), 1)
        for name, entry in rungs.trials.items():
            for k in entry["rungs"]:
                peers = [e["rungs"][k]["curve"] for other, e in rungs.trials.items()
                         if other != name and e["sigma"] == entry["sigma"] and k in e["rungs"]]
                got, expected = rungs.others_envelope(name, k), best_by_radius(peers)
                assert got.keys() == expected.keys()
                assert all(got[r] == expected[r] or math.isnan(got[r]) and math.isnan(
                    expected[r]) for r in got), (got, expected)


# --- the spec block -----------------------------------------------------------------------


def test_the_schedule_block_parses_records_and_places_its_rungs():
    spec = parse_spec({"name": "s", "grid": {"sigma": [0.25]},
                       "schedule": {"rungs": [0.34, 0.67], "margin": 0.1}})
    assert spec.schedule == EarlyStopping(rungs=(0.34, 0.67), margin=0.1)
    assert spec.to_dict()["schedule"]["rungs"] == [0.34, 0.67]
    assert parse_spec(spec.to_dict()).schedule == spec.schedule  # sweep.yaml reads back
    assert "schedule" not in parse_spec({"name": "s", "grid": {"sigma": [0.25]}}).to_dict()
    assert EarlyStopping(rungs=(0.34, 0.67)).rung_epochs(9) == {3: 1, 6: 2}
    assert EarlyStopping(rungs=(0.34, 0.67)).rung_epochs(3) == {1: 1, 2: 2}
    assert EarlyStopping(rungs=(0.1, 0.2, 0.99)).rung_epochs(3) == {1: 1}  # duplicate, last dropped
    assert EarlyStopping(rungs=(0.5,)).rung_epochs(1) == {}
    assert EarlyStopping(images=100).proxy_skip(10000) == 100
    assert EarlyStopping(images=100).proxy_skip(50) == 1
    # default radii: every 0.25 up to what the proxy's n certifies at σ (n = 500: 0.55 at
    # σ = 0.25), or the trials' certify.target_radius when that is smaller
    assert EarlyStopping().radii_for(0.25) == [0.0, 0.25, 0.5]
    assert EarlyStopping().radii_for(1.0, target_radius=0.6) == [0.0, 0.25, 0.5]
    assert EarlyStopping(radii=(0.5, 0.0)).radii_for(1.0) == [0.0, 0.5]


@pytest.mark.parametrize("block, message", [
    ({"margin": -0.1}, "schedule.margin: must be ≥ 0"),
    ({"rungs": []}, "schedule.rungs: give at least one"),
    ({"rungs": [0.5, 1.0]}, "schedule.rungs: each must lie in (0, 1)"),
    ({"rungs": 0.5}, "schedule.rungs: expected a list of numbers"),
    ({"min_trials": 1}, "schedule.min_trials: must be ≥ 2"),
    ({"images": 0}, "schedule.images: must be ≥ 1"),
    ({"alpha": 0.7}, "schedule.alpha: must lie in (0, 0.5)"),
    ({"radii": [-1]}, "schedule.radii: must be ≥ 0"),
    ({"n": 1.5}, "schedule.n: expected an integer"),
    ({"eta": 3}, "schedule.eta: unknown key"),
])
def test_a_bad_schedule_block_is_one_line_naming_the_key(block, message):
    with pytest.raises(UserError) as e:
        parse_spec({"name": "s", "grid": {"sigma": [0.25]}, "schedule": block})
    assert str(e.value).startswith(message) and "\n" not in str(e.value), str(e.value)


# --- one tiny real sweep ------------------------------------------------------------------

GOOD, BAD = "sigma0.25-lr0.05", "sigma0.25-lr1e-06"
# An epoch with its report takes ~1 s here, and the trials' rung reports arrive up to ~3 s
# apart: 10 epochs let the bad trial be stopped well before its last.
EPOCHS = 10


def test_a_dominated_trial_is_stopped_after_its_rung(local_ray, tmp_path, capsys):
    from smoothadv.cli.main import main

    defaults = {"dataset": "synthetic", "arch": "lenet", "train_subset": 2048,
                "epoch_test_subset": 64, "epochs": EPOCHS, "batch_size": 64, "method": "gaussian",
                "device": "cpu", "certify": {"n0": 16, "n": 100, "batch_size": 100, "skip": 64}}
    spec = {"name": "scheduled", "defaults": defaults,
            "resources": {"workers": 1, "cpus_per_worker": 1},
            # one rung, after epoch 1 (0.1·10); the proxy: every 8th of the 512
            # test images (64) at n = 100, judged at the default radii (0 and 0.25: n = 100
            # certifies up to 0.375 at σ = 0.25)
            "schedule": {"rungs": [0.1], "images": 64, "n0": 16, "n": 100, "min_trials": 2,
                         "margin": 0.05},
            "grid": {"sigma": [0.25], "lr": [0.05, 1e-6]}}
    path = tmp_path / "scheduled.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert main(["sweep", "run", str(path), "--storage", str(tmp_path), "--verbose", "0",
                 "--max-concurrent", "2"]) == 0
    out = capsys.readouterr().out
    sweep_dir = tmp_path / "scheduled"
    assert "interrupted" not in out
    good, bad = (layout.trial_dir(sweep_dir, name) for name in (GOOD, BAD))

    def epochs(trial):
        return [json.loads(m)["epoch"] for m in (trial / layout.METRICS).read_text()
                .splitlines()]

    why = stopped_trials(sweep_dir)[BAD]
    assert why.startswith("dominated at rung 1 (epoch 1) by σ=0.25's envelope by ≥ 0.05")
    state = json.loads((bad / layout.STATE).read_text())
    assert state["state"] == "STOPPED" and state["why"] == why, state
    assert 1 <= len(epochs(bad)) < EPOCHS  # stopped after its rung, before its last epoch
    assert not (bad / layout.CERTIFY).exists()
    assert json.loads((good / layout.STATE).read_text())["state"] == "TERMINATED"
    assert epochs(good) == list(range(EPOCHS))
    assert len(pd.read_csv(good / layout.CERTIFY, sep="\t")) == 8
    for trial in (good, bad):  # each certified its proxy at the rung: 64 images
        proxy = pd.read_csv(trial / layout.proxy_name(1), sep="\t")
        assert list(proxy["idx"]) == list(range(0, 512, 8))
    record = json.loads((sweep_dir / layout.SCHEDULE).read_text())
    assert set(record["trials"]) == {GOOD, BAD} and set(record["stopped"]) == {BAD}
    assert set(record["trials"][GOOD]["rungs"]["1"]["curve"]) == {"0", "0.25"}
    assert record["trials"][GOOD]["rungs"]["1"]["curve"]["0"] > 0.5
    capsys.readouterr()
    assert main(["sweep", "status", str(sweep_dir)]) == 0
    # the stopped trial's Train run ended by itself: no placement group is left holding CPUs
    # (Tune's STOP would have killed its controller first and stranded its workers' CPU)
    from ray.util import placement_group_table

    left = [pg["bundles"] for pg in placement_group_table().values() if pg["state"] == "CREATED"]
    assert left == [], left
    status = capsys.readouterr().out
    assert status.splitlines()[-1] == "2 trials: 1 stopped, 1 terminated"
    assert "why" in status.splitlines()[0] and "dominated at rung 1 (epoch 1)" in status


def test_a_staged_sweep_leaves_the_stopped_trials_at_stage_1_with_the_reason(tmp_path):
    from smoothadv.sweep import staged_sweep
    from smoothadv.sweep.storage import open_sweep

    spec = parse_spec({"name": "st", "grid": {"sigma": [0.25], "lr": [0.05, 1e-6]},
                       "defaults": {"dataset": "synthetic", "arch": "lenet",
                                    "method": "gaussian", "certify": {"n": 400, "skip": 64}},
                       "stages": {"n": 200, "skip": 8, "radii": [0.0, 0.25]},
                       "schedule": {"min_trials": 2}})
    sweep = open_sweep(tmp_path)
    staged_sweep.begin(sweep, 1, {t.name: {"stage": 1, "why": ""} for t in spec.trials()})
    # the trained trial screened (8 rows right at radius 0.3); the stopped one never was
    rows = pd.DataFrame({"idx": range(0, 64, 8), "label": 0, "predict": 0, "radius": 0.3,
                         "correct": 1, "time": "0:00:00.1", "pA_lower": 0.88})
    layout.trial_dir(tmp_path, GOOD).mkdir(parents=True)
    rows.to_csv(layout.trial_dir(tmp_path, GOOD) / layout.CERTIFY_STAGE1, sep="\t",
                index=False)
    why = "dominated at rung 1 (epoch 1) by σ=0.25's envelope by ≥ 0.05 at every radius"
    layout.write_json(tmp_path / layout.SCHEDULE, {"stopped": {BAD: {"why": why}}})
    stage, going = staged_sweep.next_stage(sweep, spec, 1)
    assert stage == 2 and [t.name for t in going] == [GOOD]
    assert staged_sweep.read(sweep)["trials"] == {BAD: {"stage": 1, "why": why},
                                             GOOD: {"stage": 2, "why": ""}}


def test_a_scheduled_sweep_in_a_bucket_stopped_and_resumed_elsewhere_still_stops(s3_server,
                                                                                 tmp_path):
    """A scheduled sweep stored in a bucket is stopped (`sweep stop`, a real SIGTERM) before
    its rung and resumed from another machine's empty cache: the restored scheduler judges the
    rung, the dominated trial's worker reads the stop from the bucket's schedule.json and ends.
    That machine is lost right after the stop (SIGKILL); resumed from a third, the stopped
    trial stays stopped and the other trains to its last epoch; no epoch is trained twice.
    Both trials are held after their first epoch (SMOOTHADV_FAULTS' hold point) until the
    stop ends them: a trial left to run could reach its rung before the stop did (it once
    trained 7 epochs meanwhile)."""
    import os
    import subprocess
    import sys
    import time

    from conftest import BUCKET
    from smoothadv.sweep.storage import Bucket

    # one rung, at half the epochs: the trained trial reaches it at epoch 2 of 4, the untrained
    # one at epoch 12 of 24, so the latter is judged at its own rung report, always in time
    epochs, rung_epoch = 4, 12
    defaults = {"dataset": "synthetic", "arch": "lenet", "train_subset": 1024,
                "epoch_test_subset": 64, "epochs": epochs, "batch_size": 64, "method": "gaussian",
                "device": "cpu", "certify": {"n0": 16, "n": 100, "batch_size": 100, "skip": 64}}
    spec = {"name": "resumed", "defaults": defaults,
            "resources": {"workers": 1, "cpus_per_worker": 1, "upload_every_s": 0.5},
            "schedule": {"rungs": [0.5], "images": 64, "n0": 16, "n": 100, "min_trials": 2},
            "grid": [{"sigma": [0.25], "lr": [0.05]},
                     {"sigma": [0.25], "lr": [1e-6], "epochs": [2 * rung_epoch]}]}
    assert EarlyStopping(rungs=(0.5,)).rung_epochs(2 * rung_epoch) == {rung_epoch: 1}
    GOOD, BAD = (t.name for t in parse_spec(spec).trials())  # noqa: N806 (the module's names)
    path = tmp_path / "resumed.yaml"
    path.write_text(yaml.safe_dump(spec))
    uri = f"s3://{BUCKET}/scheduled/resumed"
    held = tmp_path / "held"  # the hold points' markers: each fires once

    def env(cache: str, faults: str | None = None) -> dict[str, str]:
        full = {**os.environ, **s3_server, "SMOOTHADV_CACHE": str(tmp_path / cache)}
        full.pop("SMOOTHADV_FAULTS", None)
        return full if faults is None else {**full, "SMOOTHADV_FAULTS": faults}

    def cli(cache: str, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "smoothadv.cli.main", *args], env=env(cache),
                              capture_output=True, text=True, timeout=600)

    def epochs_of(name: str) -> list[int]:
        data = Bucket(uri).child(f"{layout.TRIALS}/{name}").read_bytes(layout.METRICS) or b""
        return [json.loads(line)["epoch"] for line in data.decode().splitlines()
                if line.endswith("}")]

    driver = subprocess.Popen([sys.executable, "-m", "smoothadv.cli.main",
                               "sweep", "run", str(path),
                               "--storage", f"s3://{BUCKET}/scheduled", "--verbose", "0",
                               "--max-concurrent", "2"],
                              env=env("head", ";".join(f"hold_after_epoch:0:{name}:{held}"
                                                       for name in (GOOD, BAD))),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (epochs_of(GOOD) and epochs_of(BAD)):  # both trials trained an epoch
        assert driver.poll() is None and time.monotonic() < deadline, "training never started"
        time.sleep(0.2)
    stopped = cli("head", "sweep", "stop", uri)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    driver.wait(timeout=120)
    assert {name: epochs_of(name) for name in (GOOD, BAD)} == {GOOD: [0], BAD: [0]}
    assert sorted(p.name for p in held.iterdir()) == sorted(f"hold_after_epoch-0-{name}"
                                                            for name in (GOOD, BAD))
    assert not (Bucket(uri).read_bytes(layout.SCHEDULE) and
                json.loads(Bucket(uri).read_bytes(layout.SCHEDULE)).get("stopped"))

    # resumed on a second machine, which is lost (the driver's process group SIGKILLed) right
    # after the schedule stopped the dominated trial; a third machine resumes it to the end
    import signal

    driver = subprocess.Popen([sys.executable, "-m", "smoothadv.cli.main", "sweep", "resume", uri,
                               "--verbose", "0"], env=env("elsewhere"), start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while BAD not in json.loads(Bucket(uri).read_bytes(layout.SCHEDULE) or b"{}").get(
            "stopped", {}):
        assert driver.poll() is None and time.monotonic() < deadline, "no trial was stopped"
        time.sleep(0.2)
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    resumed = cli("third", "sweep", "resume", uri, "--verbose", "0")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    bad = epochs_of(BAD)
    assert bad == list(range(len(bad))) and rung_epoch <= len(bad) < 2 * rung_epoch, bad
    assert epochs_of(GOOD) == list(range(epochs))  # each epoch once: resumed, not restarted
    record = json.loads(Bucket(uri).read_bytes(layout.SCHEDULE))
    assert set(record["stopped"]) == {BAD}
    assert record["stopped"][BAD]["why"].startswith(f"dominated at rung 1 (epoch {rung_epoch})")
    trials = Bucket(uri).child(layout.TRIALS)
    assert json.loads(trials.read_bytes(f"{BAD}/{layout.STATE}"))["state"] == "STOPPED"
    assert json.loads(trials.read_bytes(f"{GOOD}/{layout.STATE}"))["state"] == "TERMINATED"
    assert trials.read_bytes(f"{BAD}/{layout.CERTIFY}") is None
    assert len(trials.read_bytes(f"{GOOD}/{layout.CERTIFY}").decode().splitlines()) == 1 + 8
    status = cli("fourth", "sweep", "status", uri)
    assert status.stdout.splitlines()[-1] == "2 trials: 1 stopped, 1 terminated", status.stdout
