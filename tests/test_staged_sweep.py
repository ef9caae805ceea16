"""A staged sweep through real local Ray (issue 15 part 1): stage 1 trains every trial and
screens it cheaply; only trials that can still reach the envelope, overall or within their σ,
are certified at full n (stage 2); the envelope's winners are re-certified on the finer image
grid (stage 3). stages.json says which stage each trial reached and why it stopped; the
numbers a report reads (certify.tsv) come from full-n rows only."""

from __future__ import annotations

import json

import pandas as pd
import yaml

from common import layout, stage_record
from sweep.cli import main

DEFAULTS = {"dataset": "synthetic", "arch": "lenet", "test_subset": 64, "epochs": 2,
            "batch_size": 64, "method": "gaussian", "device": "cpu",
            "certify": {"n0": 16, "n": 400, "batch_size": 200, "skip": 64}}  # 8 images
GOOD, BAD, WIDE = "sigma0.25-lr0.05", "sigma0.25-lr1e-06", "sigma0.5-lr0.05"


def test_a_staged_sweep_certifies_in_full_only_what_can_reach_the_envelope(local_ray,
                                                                           tmp_path, capsys):
    spec = {"name": "staged", "defaults": DEFAULTS,
            "resources": {"workers": 1, "cpus_per_worker": 1},
            # stage 1: every 8th of the 512 test images (64) at n = 200, judged at radii 0 and
            # 0.25 (at full n's largest radii any confident constant classifier may hold the
            # envelope: it is kept there); stage 3: every 32nd image
            "stages": {"n": 200, "skip": 8, "radii": [0.0, 0.25], "final_skip": 32},
            "grid": [{"sigma": [0.25], "lr": [0.05, 1e-6]}, {"sigma": [0.5], "lr": [0.05]}]}
    path = tmp_path / "staged.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert main(["sweep", "run", str(path), "--storage", str(tmp_path), "--verbose", "0"]) == 0
    out = capsys.readouterr().out
    sweep_dir = tmp_path / "staged"
    record = json.loads((sweep_dir / layout.STAGES).read_text())
    trials = record["trials"]
    # the untrained trial is dominated within its σ and overall: it stops after screening
    assert trials[BAD]["stage"] == 1 and trials[BAD]["why"].startswith("dominated at every")
    # each trained trial holds its σ's envelope: certified in full, then on the finer grid
    assert trials[GOOD] == trials[WIDE] == {"stage": 3, "why": ""}, trials
    assert record["stage"] == stage_record.DONE == 4  # every stage done
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
        assert layout.read_json(trial / layout.CERTIFY_PLAN) == {"planned": 16}
        assert [json.loads(m)["epoch"] for m in (trial / layout.METRICS).read_text()
                .splitlines()] == [0, 1]  # trained once, in stage 1
    assert "stage 2: 2 trials" in out and "stage 3: 2 trials" in out
    assert "2 trials certified through stage 3, 1 trial stopped at stage 1" in out
    for stage in ("tune", "tune-stage2", "tune-stage3"):
        assert (sweep_dir / stage).is_dir()
    capsys.readouterr()
    assert main(["sweep", "status", str(sweep_dir)]) == 0
    status = capsys.readouterr().out
    assert "every stage done: 2 trials certified through stage 3, 1 trial stopped at stage 1" \
        in status and "dominated at every radius" in status
    # resuming a finished staged sweep runs nothing and says where every trial stopped
    assert main(["sweep", "resume", str(sweep_dir), "--verbose", "0"]) == 0
    assert "1 trial stopped at stage 1" in capsys.readouterr().out
