"""The sweep driver stopped (`sweep stop`, SIGTERM) or its machine replaced. SIGKILLs at every
moment of a sweep, with the final weights compared to an uninterrupted run's: test_kill_matrix."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml
from conftest import sweep_yaml
from smoothadv.common import layout
from smoothadv.common.layout import CHECKPOINT
from smoothadv.sweep import processes, trust

SPEC = {"name": "killed",
        "defaults": {"dataset": "synthetic", "arch": "lenet", "train_subset": 768,
                     "epoch_test_subset": 32, "epochs": 4, "batch_size": 64, "lr": 0.05,
                     "steps": 1, "epsilon": 0.25, "warmup_epochs": 1, "device": "cpu",
                     "certify": {"n0": 16, "n": 100, "batch_size": 100, "skip": 128}},
        "resources": {"workers": 1, "cpus_per_worker": 1},
        "grid": {"attack": ["pgd"]}}


def smoothadv(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "smoothadv.cli.main", *args], **kwargs)


def held_after(epoch: int, markers: Path) -> dict[str, str]:
    """The environment of a driver whose trial parks after ``epoch`` (sweep.faults)."""
    return {**os.environ, "SMOOTHADV_FAULTS": f"hold_after_epoch:{epoch}:pgd:{markers}"}


def wait_until_parked(driver: subprocess.Popen, epoch: int, markers: Path) -> None:
    deadline = time.monotonic() + 240
    while not (markers / f"hold_after_epoch-{epoch}-pgd").exists():
        assert driver.poll() is None and time.monotonic() < deadline, f"no epoch {epoch}"
        time.sleep(0.2)


def test_sigterm_then_sweep_stop_interrupt_the_driver_and_leave_no_ray_process(tmp_path):
    """Kubernetes deleting the head pod, or SLURM ending the job, sends SIGTERM: Tune saves its
    state, the trial is INTERRUPTED (never ERROR) with its checkpoint kept, exit code 143. The
    resumed sweep is then stopped by `sweep stop` (as Ctrl-C: exit 130), which leaves no Ray
    process behind. One sweep for both (each start costs a local Ray)."""
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(SPEC))
    sweep_dir, trial, markers = tmp_path / "killed", tmp_path / "killed" / "trials" / "pgd", \
        tmp_path / "markers"
    env = {k: v for k, v in os.environ.items() if k != "SMOOTHADV_FAULTS"}
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    driver = smoothadv("sweep", "run", str(spec), "--storage", str(tmp_path), "--verbose", "0",
                       env=held_after(0, markers), **pipes)
    wait_until_parked(driver, 0, markers)
    record = json.loads((sweep_dir / layout.DRIVER).read_text())
    assert time.time() - record["heartbeat"] < 60  # the running driver keeps a heartbeat
    driver.send_signal(signal.SIGTERM)
    out, err = driver.communicate(timeout=120)
    assert driver.returncode == 143, err[-2000:]
    assert "interrupted with 0 of 1 trials finished" in out
    state = json.loads((trial / layout.STATE).read_text())
    assert state["state"] == "INTERRUPTED"
    assert torch.load(trial / CHECKPOINT, weights_only=True)["epoch"] == 1
    assert not (sweep_dir / layout.DRIVER).exists()

    # resumed, the trial parked after epoch 1, then `sweep stop`
    driver = smoothadv("sweep", "resume", str(sweep_dir), "--verbose", "0",
                       env=held_after(1, markers), **pipes)
    wait_until_parked(driver, 1, markers)
    recorded = [tuple(p) for p in json.loads((sweep_dir / layout.DRIVER).read_text())
                ["ray_processes"]]
    assert recorded, "the driver recorded no Ray process: the check below would prove nothing"
    stop = subprocess.run([sys.executable, "-m", "smoothadv.cli.main",
                           "sweep", "stop", str(sweep_dir)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert stop.returncode == 0 and "stopped; continue with" in stop.stdout
    out, err = driver.communicate(timeout=60)
    assert driver.returncode == 130, err[-2000:]  # as after Ctrl-C: not a finished sweep
    assert "interrupted with 0 of 1 trials finished" in out
    assert not any(processes.alive(p) for p in recorded)
    assert not (sweep_dir / layout.DRIVER).exists()
    assert torch.load(trial / CHECKPOINT, weights_only=True)["epoch"] == 2  # kept for resume
    status = subprocess.run([sys.executable, "-m", "smoothadv.cli.main", "sweep", "status",
                             str(sweep_dir)], capture_output=True, text=True, env=env)
    assert "INTERRUPTED" in status.stdout


def test_stop_without_a_running_driver(tmp_path):
    (tmp_path / layout.SPEC).write_text(sweep_yaml(SPEC))
    out = subprocess.run([sys.executable, "-m", "smoothadv.cli.main",
                          "sweep", "stop", str(tmp_path)],
                         capture_output=True, text=True)
    assert out.returncode == 0 and "no driver is running" in out.stdout
    assert not Path(tmp_path / layout.DRIVER).exists()


def test_a_driver_on_a_replaced_machine_is_judged_by_its_heartbeat(tmp_path):
    """The head pod or node that ran the driver is gone: from a new machine, `sweep stop` and
    `resume` refuse while the old driver's heartbeat is fresh and go ahead once it is stale,
    ending no local process on the strength of another host's process ids."""
    from smoothadv.sweep.status import STALE_S, driver_alive

    (tmp_path / layout.SPEC).write_text(sweep_yaml(SPEC))
    me = os.getpid(), processes.start_time(os.getpid())  # must survive: same pid, other host
    record = {"pid": me[0], "start": me[1], "host": "old-head-pod",
              "ray_processes": [list(me)]}
    layout.write_json(tmp_path / layout.DRIVER,
                      trust.signed({**record, "heartbeat": time.time() - 5}))
    assert driver_alive(tmp_path)
    fresh = subprocess.run([sys.executable, "-m", "smoothadv.cli.main",
                            "sweep", "stop", str(tmp_path)],
                           capture_output=True, text=True)
    assert fresh.returncode == 2 and "runs on old-head-pod" in fresh.stderr
    assert (tmp_path / layout.DRIVER).exists()

    layout.write_json(tmp_path / layout.DRIVER,
                      trust.signed({**record, "heartbeat": time.time() - STALE_S - 1}))
    assert not driver_alive(tmp_path)
    stale = subprocess.run([sys.executable, "-m", "smoothadv.cli.main",
                            "sweep", "stop", str(tmp_path)],
                           capture_output=True, text=True)
    assert stale.returncode == 0, stale.stderr
    assert "the driver on old-head-pod is gone" in stale.stdout
    assert not (tmp_path / layout.DRIVER).exists()
    assert processes.alive(me)  # nothing local was ended for the remote record
