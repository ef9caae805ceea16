"""Faults that must never cost finished work: damaged checkpoints, a killed certification, a
full disk, a disk that turns read-only."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from trainers.checkpoint import previous_path
from trainers.config import parse_trial_config
from trainers.errors import UserError
from trainers.train import CHECKPOINT, train_trial

TINY = {"dataset": "synthetic", "arch": "lenet", "train_subset": 64, "test_subset": 32,
        "batch_size": 32, "lr": 0.05, "method": "gaussian", "device": "cpu"}


def weights(path):
    return torch.load(path, weights_only=True)["state_dict"]


def test_a_corrupt_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, capsys):
    reference = tmp_path / "reference"
    train_trial(parse_trial_config({**TINY, "epochs": 3}), reference, progress=False)
    trial = tmp_path / "trial"
    train_trial(parse_trial_config({**TINY, "epochs": 2}), trial, progress=False)
    newest = trial / CHECKPOINT
    assert torch.load(previous_path(newest), weights_only=True)["epoch"] == 1
    newest.write_bytes(newest.read_bytes()[:1000])  # truncated mid-write by a dying disk
    capsys.readouterr()
    train_trial(parse_trial_config({**TINY, "epochs": 3}), trial, progress=False)
    said = capsys.readouterr().out
    assert f"{newest}: checkpoint is truncated or corrupt" in said
    assert "resuming from the previous checkpoint" in said and "(epoch 1)" in said
    # epochs 1 and 2 were trained again from epoch 1's state: the run equals an uninterrupted one
    final, expected = weights(trial / CHECKPOINT), weights(reference / CHECKPOINT)
    assert all(torch.equal(final[k], expected[k]) for k in expected)
    lines = (trial / "metrics.jsonl").read_text().splitlines()
    assert [int(line.split('"epoch": ')[1].split(",")[0]) for line in lines] == [0, 1, 2]


def test_with_no_readable_checkpoint_left_the_error_names_the_file(tmp_path):
    trial = tmp_path / "trial"
    train_trial(parse_trial_config({**TINY, "epochs": 2}), trial, progress=False)
    for path in (trial / CHECKPOINT, previous_path(trial / CHECKPOINT)):
        path.write_bytes(b"garbage")
    with pytest.raises(UserError, match=f"{trial / CHECKPOINT}: .*no readable checkpoint left"):
        train_trial(parse_trial_config({**TINY, "epochs": 3}), trial, progress=False)


def test_a_checkpoint_of_another_arch_is_refused_not_skipped(tmp_path):
    trial = tmp_path / "trial"
    train_trial(parse_trial_config({**TINY, "epochs": 1}), trial, progress=False)
    with pytest.raises(UserError, match="checkpoint arch is 'lenet', expected 'cifar_resnet20'"):
        train_trial(parse_trial_config({**TINY, "arch": "cifar_resnet20", "epochs": 2}), trial,
                    progress=False)


def certify_command(ckpt, out, *extra):
    return [sys.executable, "-m", "sweep.cli", "certify", str(ckpt), "--sigma", "0.25", "--n0",
            "20", "--n", "2000", "--alpha", "0.01", "--batch", "500", "--skip", "8", "--out",
            str(out), "--device", "cpu", "--no-progress", *extra]


def rows(path) -> list[list[str]]:
    """Complete rows without the time column."""
    lines = Path(path).read_text().splitlines()
    return [line.split("\t")[:5] + line.split("\t")[6:] for line in lines]


def test_certification_sigkilled_mid_run_resumes_at_the_next_image(synthetic_checkpoint,
                                                                   tmp_path):
    out = tmp_path / "killed.tsv"
    run = subprocess.Popen(certify_command(synthetic_checkpoint, out),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not out.exists() or out.read_text().count("\n") < 4:  # header + 3 rows
        assert run.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    run.send_signal(signal.SIGKILL)
    run.wait()
    done = out.read_text().count("\n") - 1
    assert done < 64, "killed too late to prove anything"
    subprocess.run(certify_command(synthetic_checkpoint, out), check=True,
                   stdout=subprocess.DEVNULL)
    reference = tmp_path / "reference.tsv"
    subprocess.run(certify_command(synthetic_checkpoint, reference), check=True,
                   stdout=subprocess.DEVNULL)
    assert rows(out) == rows(reference)  # exactly one complete row per image, same numbers


def mounted_tmpfs(folder: Path, size: str):
    """A tmpfs of ``size`` at ``folder`` (needs root and mount); skips the test where it cannot
    be made, unmounts afterwards."""
    folder.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                          capture_output=True)
    if made.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


@pytest.fixture
def tiny_disk(tmp_path):
    """A 64 KiB tmpfs."""
    yield from mounted_tmpfs(tmp_path / "disk", "64k")


@pytest.fixture
def disk(tmp_path):
    """A 64 MiB tmpfs that a test can remount read-only."""
    yield from mounted_tmpfs(tmp_path / "disk", "64m")


def test_a_full_disk_is_one_clear_error_and_earlier_rows_stay(synthetic_checkpoint, tiny_disk):
    out = tiny_disk / "certify.tsv"
    free = os.statvfs(tiny_disk).f_bavail * os.statvfs(tiny_disk).f_frsize
    (tiny_disk / "filler").write_bytes(b"\0" * (free - 2 * 4096))  # two pages left
    result = subprocess.run(certify_command(synthetic_checkpoint, out, "--n", "100"),
                            capture_output=True, text=True)
    assert result.returncode == 1
    err = result.stderr.strip().splitlines()
    assert len(err) == 1 and "No space left on device" in err[0] and str(out) in err[0]
    written = out.read_text().splitlines(keepends=True)
    complete = [line for line in written if line.endswith("\n")]
    assert len(complete) > 10  # the rows written before the disk filled are all there
    (tiny_disk / "filler").unlink()  # free space, re-run: it resumes and completes
    subprocess.run(certify_command(synthetic_checkpoint, out, "--n", "100"), check=True,
                   stdout=subprocess.DEVNULL)
    final = pd.read_csv(out, sep="\t")
    assert list(final["idx"]) == list(range(0, 512, 8))


def remount(folder: Path, mode: str) -> None:
    """Remount ``folder`` ``ro`` or ``rw``; a file open for writing makes the kernel refuse
    (EBUSY) for a moment, so retry briefly."""
    deadline = time.monotonic() + 30
    while subprocess.run(["mount", "-o", f"remount,{mode}", str(folder)],
                         capture_output=True).returncode != 0:
        assert time.monotonic() < deadline, f"cannot remount {folder} {mode}"
        time.sleep(0.01)


def test_a_disk_turned_read_only_mid_training_is_one_clear_error_and_keeps_the_epochs(disk,
                                                                                       tmp_path):
    config = tmp_path / "trial.yaml"
    config.write_text(yaml.safe_dump({**TINY, "train_subset": 2048, "method": "smoothadv",
                                      "m_train": 2, "steps": 2, "epochs": 3}))
    trial = disk / "trial"
    command = [sys.executable, "-m", "sweep.cli", "train", str(config), "--out", str(trial),
               "--no-progress"]
    run = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (trial / "metrics.jsonl").exists() or not (trial / "metrics.jsonl").read_text():
        assert run.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    remount(disk, "ro")  # during epoch 1: its checkpoint cannot be written
    _, err = run.communicate(timeout=120)
    assert run.returncode == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Read-only file system" in lines[0]
    assert str(trial / CHECKPOINT) in lines[0]
    assert torch.load(trial / CHECKPOINT, weights_only=True)["epoch"] == 1  # epoch 0 done
    assert [json.loads(line)["epoch"] for line in
            (trial / "metrics.jsonl").read_text().splitlines()] == [0]
    remount(disk, "rw")  # the disk is back: the same command resumes at epoch 1 and finishes
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    assert [json.loads(line)["epoch"] for line in
            (trial / "metrics.jsonl").read_text().splitlines()] == [0, 1, 2]
