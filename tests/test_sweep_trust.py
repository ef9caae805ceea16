"""A sweep folder is no way in (sweep.trust): Tune's restore point reaches Ray only when this
user's key signed it, and only a signed driver record makes `sweep stop` end processes."""

from __future__ import annotations

import json
import os
import pickle
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import sweep_yaml
from smoothadv.cli.main import main
from smoothadv.common import layout
from smoothadv.sweep import processes, trust
from smoothadv.sweep.storage import open_sweep

SPEC = {"name": "trusted",
        "defaults": {"dataset": "synthetic", "arch": "lenet", "epochs": 1, "device": "cpu"},
        "resources": {"workers": 1, "cpus_per_worker": 1},
        "grid": {"attack": ["pgd"]}}


class Payload:
    """What a forged pickle does when loaded: leaves a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def sweep_folder(tmp_path: Path) -> Path:
    """A sweep folder with a spec and a Tune restore point nobody signed."""
    folder = tmp_path / "trusted"
    (folder / layout.TUNE).mkdir(parents=True)
    (folder / layout.SPEC).write_text(sweep_yaml(SPEC))
    (folder / layout.TUNE / "experiment_state-2026-01-01_00-00-00.json").write_text(
        json.dumps({"trial_data": [], "runner_data": {}, "stats": {}}))
    return folder


def one_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_a_forged_tuner_pickle_is_refused_before_ray_unpickles_it(tmp_path):
    folder = sweep_folder(tmp_path)
    marker = tmp_path / "payload-ran"
    (folder / layout.TUNE / "tuner.pkl").write_bytes(pickle.dumps(Payload(marker)))
    resume = subprocess.run([sys.executable, "-m", "smoothadv.cli.main",
                             "sweep", "resume", str(folder)],
                            capture_output=True, text=True, timeout=300)
    assert resume.returncode == 2, resume.stderr
    lines = resume.stderr.strip().splitlines()
    assert len(lines) == 1 and "not signed by your smoothadv key" in lines[0]
    assert f"smoothadv sweep trust {folder}" in lines[0]
    assert not marker.exists()
    assert "Ray" not in resume.stdout  # refused before Ray started


def test_trust_signs_what_the_user_read_and_any_later_change_is_refused(tmp_path, capsys):
    folder = sweep_folder(tmp_path)
    (folder / layout.TUNE / "tuner.pkl").write_bytes(pickle.dumps({"plain": "state"}))
    sweep = open_sweep(folder)
    with pytest.raises(Exception, match="experiment_state-2026-01-01_00-00-00.json: not signed"):
        trust.verify_tune_state(sweep, layout.TUNE)
    assert main(["sweep", "trust", str(folder)]) == 0
    assert "signed 2 files" in capsys.readouterr().out
    trust.verify_tune_state(sweep, layout.TUNE)  # both files now carry the user's signature
    (folder / layout.TUNE / "basic-variant-state-x.json").write_bytes(b"\x80\x04N.")
    with pytest.raises(Exception, match="basic-variant-state-x.json: not signed"):
        trust.verify_tune_state(sweep, layout.TUNE)
    signatures = json.loads((folder / trust.SIGNATURES).read_text())
    assert list(signatures["signers"]) == [trust.key_id(trust._key())]


def test_an_unsigned_tuner_pickle_without_experiment_state_is_removed(tmp_path):
    """A driver killed between making its Tuner and signing it: nothing ran, so the pickle is
    dropped (never loaded) and the resume starts the experiment afresh."""
    folder = tmp_path / "fresh"
    (folder / layout.TUNE).mkdir(parents=True)
    (folder / layout.TUNE / "tuner.pkl").write_bytes(pickle.dumps(Payload(tmp_path / "x")))
    trust.verify_tune_state(open_sweep(folder), layout.TUNE)
    assert not (folder / layout.TUNE / "tuner.pkl").exists()
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("content", ["[1, 2]", "{not json", '{"format_version": 9, "signers": {}}'])
def test_a_damaged_signatures_record_is_one_line(tmp_path, capsys, content):
    folder = sweep_folder(tmp_path)
    (folder / trust.SIGNATURES).write_text(content)
    assert main(["sweep", "resume", str(folder)]) == 2
    assert str(folder / trust.SIGNATURES) in one_line(capsys)


def test_a_key_others_can_read_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SMOOTHADV_CONFIG_DIR", str(tmp_path / "config"))
    record = trust.signed({"pid": 1})
    key = tmp_path / "config" / "signing.key"
    assert key.stat().st_mode & 0o777 == 0o600 and trust.vouched(record)
    key.chmod(0o644)
    folder = sweep_folder(tmp_path)
    assert main(["sweep", "trust", str(folder)]) == 2
    assert f"{key}: the signing key is readable by others" in one_line(capsys)


@pytest.fixture
def bystander():
    """A process of this user that no sweep started (it must survive every `sweep stop`)."""
    sleeper = subprocess.Popen(["sleep", "300"])
    yield (sleeper.pid, processes.start_time(sleeper.pid))
    sleeper.kill()
    sleeper.wait()


def driver_record(bystander, **changes) -> dict:
    return {"pid": bystander[0], "start": bystander[1], "host": socket.gethostname(),
            "token": "t", "ray_processes": [list(bystander)], "heartbeat": time.time(),
            **changes}


def test_a_forged_driver_record_ends_no_process(tmp_path, bystander, capsys):
    folder = sweep_folder(tmp_path)
    layout.write_json(folder / layout.DRIVER, driver_record(bystander))
    assert main(["sweep", "stop", str(folder)]) == 2
    assert f"{folder / layout.DRIVER}: not signed by your smoothadv key" in one_line(capsys)
    time.sleep(0.2)
    assert processes.alive(bystander)
    # signed, but with its signature copied onto other pids: still not vouched for
    signed = trust.signed(driver_record(bystander, pid=1))
    layout.write_json(folder / layout.DRIVER, {**signed, "pid": bystander[0]})
    assert main(["sweep", "stop", str(folder)]) == 2
    assert processes.alive(bystander)


def test_a_signed_record_ends_only_ray_processes_of_a_smoothadv_driver(tmp_path, bystander,
                                                                       capsys):
    """Even the user's own record, naming a living process that runs no smoothadv command as
    its driver or no Ray as its Ray process, makes `sweep stop` send that process no signal."""
    folder = sweep_folder(tmp_path)
    layout.write_json(folder / layout.DRIVER, trust.signed(driver_record(bystander)))
    assert main(["sweep", "stop", str(folder)]) == 2
    assert f"pid {bystander[0]} is alive but runs no smoothadv command" in one_line(capsys)
    dead = subprocess.Popen(["true"])
    dead.wait()
    layout.write_json(folder / layout.DRIVER, trust.signed(driver_record(
        bystander, pid=dead.pid, start=1)))  # a driver that is gone, its Ray "process" not
    assert main(["sweep", "stop", str(folder)]) == 0
    time.sleep(0.2)
    assert processes.alive(bystander)
    assert not (folder / layout.DRIVER).exists()
