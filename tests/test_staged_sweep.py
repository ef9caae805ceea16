"""A staged sweep through real local Ray (issue 15 part 1): stage 1 trains every trial and
screens it cheaply; only trials that can still reach the envelope, overall or within their σ,
are certified at full n (stage 2); the envelope's winners are re-certified on the finer image
grid (stage 3). stages.json says which stage each trial reached and why it stopped; the
numbers a report reads (certify.tsv) come from full-n rows only."""

from __future__ import annotations

import json
import os

import pandas as pd
import yaml
from smoothadv.common import layout, stages_file
from smoothadv.common.records import read_plan

DEFAULTS = {"dataset": "synthetic", "arch": "lenet", "epoch_test_subset": 64, "epochs": 2,
            "batch_size": 64, "method": "gaussian", "device": "cpu",
            "certify": {"n0": 16, "n": 400, "batch_size": 200, "skip": 64}}  # 8 images
GOOD, BAD, WIDE = "sigma0.25-lr0.05", "sigma0.25-lr1e-06", "sigma0.5-lr0.05"


def test_a_staged_sweep_certifies_in_full_only_what_can_reach_the_envelope(tmp_path):
    """The staged sweep runs as a user runs it (its own local Ray, 3 trials on 2 CPUs, no
    flags), its driver's process group SIGKILLed between stage 1 and stage 2 (one of
    test_kill_matrix's moments); one `sweep resume` goes on with stage 2 and ends the sweep."""
    from drivers import (
        kill_group,
        resume_changes_nothing,
        run,
        smoothadv,
        status_after_kill,
        wait_for,
    )

    spec = {"name": "staged", "defaults": DEFAULTS,
            "resources": {"workers": 1, "cpus_per_worker": 1},
            # stage 1: every 8th of the 512 test images (64) at n = 200, judged at radii 0 and
            # 0.25 (at full n's largest radii any confident constant classifier may hold the
            # envelope: it is kept there); stage 3: every 32nd image
            "stages": {"n": 200, "skip": 8, "radii": [0.0, 0.25], "final_skip": 32},
            "grid": [{"sigma": [0.25], "lr": [0.05, 1e-6]}, {"sigma": [0.5], "lr": [0.05]}]}
    path = tmp_path / "staged.yaml"
    path.write_text(yaml.safe_dump(spec))
    sweep_dir, log = tmp_path / "staged", tmp_path / "driver.log"
    env = {k: v for k, v in os.environ.items() if k != "SMOOTHADV_FAULTS"}

    def at_stage(stage: int):
        return lambda: (layout.read_json(sweep_dir / layout.STAGES) or {}).get("stage") == stage

    driver = smoothadv("sweep", "run", str(path), "--storage", str(tmp_path), "--verbose", "0",
                       env=env, log=log)
    wait_for(at_stage(2), driver, log, "stage 2 began")
    kill_group(driver)
    status_after_kill(sweep_dir, env)
    done = run("sweep", "resume", str(sweep_dir), "--verbose", "0", env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    out = done.stdout
    record = json.loads((sweep_dir / layout.STAGES).read_text())
    trials = record["trials"]
    # the untrained trial is dominated within its σ and overall: it stops after screening
    assert trials[BAD]["stage"] == 1 and trials[BAD]["why"].startswith("dominated at every")
    # each trained trial holds its σ's envelope: certified in full, then on the finer grid
    assert trials[GOOD] == trials[WIDE] == {"stage": 3, "why": ""}, trials
    assert record["stage"] == stages_file.DONE == 4  # every stage done
    for name in (GOOD, BAD, WIDE):
        screened = pd.read_csv(layout.trial_dir(sweep_dir, name) / layout.CERTIFY_STAGE1,
                               sep="\t")
        assert list(screened["idx"]) == list(range(0, 512, 8))
    assert not (layout.trial_dir(sweep_dir, BAD) / layout.CERTIFY).exists()
    for name in (GOOD, WIDE):
        trial = layout.trial_dir(sweep_dir, name)
        rows = pd.read_csv(trial / layout.CERTIFY, sep="\t")
        assert sorted(rows["idx"]) == list(range(0, 512, 32))  # stage 2's 8, then stage 3's
        meta = json.loads(layout.meta_path(trial / layout.CERTIFY).read_text())
        assert meta["n"] == 400 and meta["sequential"] is True  # full n: what reports read
        assert read_plan(trial / layout.CERTIFY_PLAN) == 16
        assert [json.loads(m)["epoch"] for m in (trial / layout.METRICS).read_text()
                .splitlines()] == [0, 1]  # trained once, in stage 1
        assert json.loads((trial / layout.STATE).read_text())["state"] == "TERMINATED"
    assert "2 trials certified through stage 3, 1 trial stopped at stage 1" in out
    for stage in ("tune", "tune-stage2", "tune-stage3"):
        assert (sweep_dir / stage).is_dir()
    status = run("sweep", "status", str(sweep_dir), env=env).stdout
    assert "every stage done: 2 trials certified through stage 3, 1 trial stopped at stage 1" \
        in status and "dominated at every radius" in status
    # resuming a finished staged sweep runs nothing and says where every trial stopped
    resume_changes_nothing(sweep_dir, env)
    assert "1 trial stopped at stage 1" in run("sweep", "resume", str(sweep_dir), env=env).stdout
