"""The sweep driver killed at every moment of a sweep with more trials than slots (the embedded
local Ray, no flags: 2 CPUs hold 2 trials), then resumed with no flags, until one resume
finishes every trial and a second changes nothing (issue 20). Each kill is a real SIGKILL, of
the driver's whole process group (its local Ray dies with it, as when the head node is lost)
or of the driver alone (its Ray processes are left behind, for `sweep resume` to end).

The moments are made exact with SMOOTHADV_FAULTS ``hold_`` points, which park a trial at a
known place until the kill (sweep.faults); a chain of kills shares one sweep, each resume being
killed at the next moment:

before any trial started → with trials queued, one parked mid-certification (in the middle
of the first resume) → one parked mid-training, the driver alone killed → the resume that
finishes → the resume that changes nothing. The other moments are killed where a sweep of
their kind already runs: between the stages of a staged sweep (test_staged_sweep), right
after the schedule stopped a trial (test_scheduler, in a bucket), with trials queued in a
bucket (test_bucket).

After every kill `sweep status` tells the truth: nothing RUNNING, nothing ERROR, and which
trials a resume runs. One writer: a second `sweep run` of the same spec started half a second
after the first, and a `sweep resume` while a resume runs, are refused in one line.
"""

from __future__ import annotations

import json
import os
import signal
import time

import pandas as pd
import torch
import yaml
from drivers import (
    kill_group,
    resume_changes_nothing,
    run,
    smoothadv,
    states,
    status_after_kill,
    wait_for,
)
from smoothadv.common import layout
from smoothadv.common.layout import CHECKPOINT
from smoothadv.sweep import processes
from smoothadv.sweep.spec import parse_spec
from smoothadv.trainers.train import train_trial

DEFAULTS = {"dataset": "synthetic", "arch": "lenet", "train_subset": 256, "epoch_test_subset": 32,
            "epochs": 2, "batch_size": 64, "lr": 0.05, "steps": 1, "epsilon": 0.25,
            "warmup_epochs": 1, "device": "cpu",
            "certify": {"n0": 16, "n": 64, "batch_size": 64, "skip": 128}}  # 4 of 512 images
UNSTAGED = {"name": "chain", "defaults": DEFAULTS,
            "resources": {"workers": 1, "cpus_per_worker": 1},
            "grid": {"sigma": [0.12, 0.25, 1.0]}}
TRIALS = ["sigma0.12", "sigma0.25", "sigma1"]
CERTIFYING, TRAINING = "sigma0.12", "sigma1"  # parked after its first row / after epoch 0


def test_an_unstaged_sweep_killed_at_every_moment_resumes_to_the_end(tmp_path):
    markers = tmp_path / "markers"
    env = {**os.environ,
           "SMOOTHADV_FAULTS": f"hold_certified:1:{CERTIFYING}:{markers};"
                               f"hold_after_epoch:0:{TRAINING}:{markers}"}
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(UNSTAGED))
    sweep_dir = tmp_path / "chain"

    # 1. Two `sweep run` half a second apart: one runs, the other is refused in one line.
    #    The one that runs is killed before any trial started.
    args = ("sweep", "run", str(spec), "--storage", str(tmp_path), "--verbose", "0")
    logs = [tmp_path / "run-a.log", tmp_path / "run-b.log"]
    drivers = [smoothadv(*args, env=env, log=logs[0])]
    time.sleep(0.5)
    drivers.append(smoothadv(*args, env=env, log=logs[1]))
    deadline = time.monotonic() + 120
    while all(d.poll() is None for d in drivers):
        assert time.monotonic() < deadline, "neither `sweep run` was refused"
        time.sleep(0.1)
    refused = next(i for i, d in enumerate(drivers) if d.returncode is not None)
    first, log = drivers[1 - refused], logs[1 - refused]
    assert drivers[refused].returncode == 2, logs[refused].read_text()[-3000:]
    refusal = logs[refused].read_text().strip().splitlines()
    assert len(refusal) == 1 and "another process is writing it" in refusal[0], refusal
    assert f"pid {first.pid} " in refusal[0], refusal[0]
    wait_for(lambda: (sweep_dir / layout.SPEC).exists(), first, log, "the spec was written")
    kill_group(first)
    assert set(states(sweep_dir, TRIALS).values()) == {None}  # no trial had started
    lines = status_after_kill(sweep_dir, env)
    assert lines[-1] == "3 trials: 3 pending"
    assert lines[-2].startswith("`sweep resume` runs 3 trials: ")

    # 2. Resumed; killed with one trial parked after its first certified row and others
    #    still queued. A second resume meanwhile is refused.
    resume = smoothadv("sweep", "resume", str(sweep_dir), "--verbose", "0", env=env, log=log)
    wait_for(lambda: (markers / f"hold_certified-1-{CERTIFYING}").exists(), resume, log,
             f"{CERTIFYING} certified its first image")
    queued = [n for n, s in states(sweep_dir, TRIALS).items() if s is None]
    assert queued, "no trial was queued at the kill"
    other = run("sweep", "resume", str(sweep_dir), "--verbose", "0", env=env)
    assert other.returncode == 2 and "another process is writing it" in other.stderr
    certify = layout.trial_dir(sweep_dir, CERTIFYING) / layout.CERTIFY
    first_row = certify.read_text().splitlines()[:2]
    kill_group(resume)
    lines = status_after_kill(sweep_dir, env)
    assert any(line.split()[:2] == [CERTIFYING, "INTERRUPTED"] for line in lines)
    assert all(n in lines[-2] for n in queued)  # the resume line names the queued trials

    # 3. Resumed; the driver alone is killed with a trial parked after its epoch 0: its Ray
    #    processes stay behind.
    resume = smoothadv("sweep", "resume", str(sweep_dir), "--verbose", "0", env=env, log=log)
    wait_for(lambda: (markers / f"hold_after_epoch-0-{TRAINING}").exists(), resume, log,
             f"{TRAINING} trained epoch 0")
    recorded = [tuple(p) for p in json.loads((sweep_dir / layout.DRIVER).read_text())
                ["ray_processes"]]
    epoch0 = (layout.trial_dir(sweep_dir, TRAINING) / layout.METRICS).read_text()
    resume.send_signal(signal.SIGKILL)  # not reaped yet: a zombie with its pid, for now
    time.sleep(2)
    left = [p for p in recorded if processes.alive(p)]
    assert left, "expected Ray processes left behind by the killed driver"
    lines = status_after_kill(sweep_dir, env)  # the zombie driver counts as dead
    assert any(line.split()[:2] == [TRAINING, "INTERRUPTED"] for line in lines)
    assert "ERROR" not in set(states(sweep_dir, TRIALS).values())
    resume.wait()

    # 4. One resume, no flags: every trial finished, nothing trained or certified twice.
    done = run("sweep", "resume", str(sweep_dir), "--verbose", "0", env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "Ray processes left by the interrupted driver" in done.stdout
    assert not any(processes.alive(p) for p in left)
    assert states(sweep_dir, TRIALS) == dict.fromkeys(TRIALS, "TERMINATED")
    for name in TRIALS:
        trial = layout.trial_dir(sweep_dir, name)
        epochs = [json.loads(m)["epoch"] for m in (trial / layout.METRICS).read_text()
                  .splitlines()]
        assert epochs == [0, 1], (name, epochs)
        rows = pd.read_csv(trial / layout.CERTIFY, sep="\t")
        assert sorted(rows["idx"]) == [0, 128, 256, 384], name
    assert certify.read_text().splitlines()[:2] == first_row  # kept, not certified again
    assert (layout.trial_dir(sweep_dir, TRAINING) / layout.METRICS).read_text() \
        .startswith(epoch0)
    # the trial resumed from its epoch-0 checkpoint ends with an uninterrupted run's weights
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the Ray worker
    try:
        config = next(t for t in parse_spec(UNSTAGED).trials() if t.name == TRAINING).config
        train_trial(config, tmp_path / "uninterrupted", progress=False)
    finally:
        torch.set_num_threads(threads)
    final = torch.load(layout.trial_dir(sweep_dir, TRAINING) / CHECKPOINT,
                       weights_only=True)["state_dict"]
    expected = torch.load(tmp_path / "uninterrupted" / CHECKPOINT,
                          weights_only=True)["state_dict"]
    assert all(torch.equal(final[k], expected[k]) for k in expected)

    # 5. A second resume changes nothing.
    resume_changes_nothing(sweep_dir, env)
