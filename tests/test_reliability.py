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
from smoothadv.common.errors import UserError
from smoothadv.common.layout import CHECKPOINT
from smoothadv.trainers.checkpoint import previous_path
from smoothadv.trainers.config import parse_trial_config
from smoothadv.trainers.train import train_trial

TINY = {"dataset": "synthetic", "arch": "lenet", "train_subset": 64, "epoch_test_subset": 32,
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
    epoch0 = (trial / "metrics.jsonl").read_text().splitlines()[0]
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
    assert lines[0] == epoch0  # epoch 0 (with its own wall time) was not trained again


def flip_a_weight_bit(path: Path) -> None:
    """Flip one bit in the middle of the largest weight tensor's bytes inside ``path`` (the
    file stays a valid archive: torch.load alone reads it without complaint)."""
    state = weights(path)
    largest = max(state.values(), key=lambda t: t.numel()).numpy().tobytes()
    data = bytearray(path.read_bytes())
    at = data.find(largest)
    assert at >= 0 and data.find(largest, at + 1) < 0
    data[at + len(largest) // 2] ^= 0x10
    path.write_bytes(bytes(data))
    torch.load(path, weights_only=True)  # silently different weights: only the digest can tell


def test_a_bit_flipped_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, capsys):
    reference = tmp_path / "reference"
    train_trial(parse_trial_config({**TINY, "epochs": 3}), reference, progress=False)
    trial = tmp_path / "trial"
    train_trial(parse_trial_config({**TINY, "epochs": 2}), trial, progress=False)
    epoch0 = (trial / "metrics.jsonl").read_text().splitlines()[0]
    flip_a_weight_bit(trial / CHECKPOINT)
    capsys.readouterr()
    train_trial(parse_trial_config({**TINY, "epochs": 3}), trial, progress=False)
    said = capsys.readouterr().out
    assert "does not match the SHA-256 digest" in said and "(epoch 1)" in said
    final, expected = weights(trial / CHECKPOINT), weights(reference / CHECKPOINT)
    assert all(torch.equal(final[k], expected[k]) for k in expected)
    assert (trial / "metrics.jsonl").read_text().splitlines()[0] == epoch0


def test_certifying_a_bit_flipped_checkpoint_is_refused_naming_it(tmp_path):
    trial = tmp_path / "trial"
    train_trial(parse_trial_config({**TINY, "epochs": 1}), trial, progress=False)
    flip_a_weight_bit(trial / CHECKPOINT)
    result = subprocess.run(certify_command(trial / CHECKPOINT, tmp_path / "c.tsv"),
                            capture_output=True, text=True)
    assert result.returncode == 2
    err = result.stderr.strip().splitlines()
    assert len(err) == 1 and str(trial / CHECKPOINT) in err[0] and "digest" in err[0]
    assert not (tmp_path / "c.tsv").exists()


def test_with_no_readable_checkpoint_left_the_error_names_the_file(tmp_path):
    trial = tmp_path / "trial"
    train_trial(parse_trial_config({**TINY, "epochs": 2}), trial, progress=False)
    for path in (trial / CHECKPOINT, previous_path(trial / CHECKPOINT)):
        path.write_bytes(b"garbage")
    with pytest.raises(UserError, match=f"{trial / CHECKPOINT}: .*no readable checkpoint left"):
        train_trial(parse_trial_config({**TINY, "epochs": 3}), trial, progress=False)


def test_a_checkpoint_of_another_arch_is_refused_not_skipped(tmp_path):
    """Refused by the run's config.yaml first; without it, by the checkpoint itself (a wrong
    folder, never a damaged file to skip over). Either way nothing in the folder changes."""
    trial = tmp_path / "trial"
    train_trial(parse_trial_config({**TINY, "epochs": 1}), trial, progress=False)
    other = parse_trial_config({**TINY, "arch": "cifar_resnet20", "epochs": 2})
    before = {p.name: p.read_bytes() for p in trial.iterdir()}
    with pytest.raises(UserError, match="config.yaml: arch is 'lenet' in this run"):
        train_trial(other, trial, progress=False)
    assert {p.name: p.read_bytes() for p in trial.iterdir()} == before
    (trial / "config.yaml").unlink()
    del before["config.yaml"]
    with pytest.raises(UserError, match="checkpoint arch is 'lenet', expected 'cifar_resnet20'"):
        train_trial(other, trial, progress=False)
    assert {p.name: p.read_bytes() for p in trial.iterdir()} == before


def certify_command(ckpt, out, *extra):
    return [sys.executable, "-m", "smoothadv.cli.main",
            "certify", str(ckpt), "--sigma", "0.25", "--n0",
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
    written = out.read_bytes()
    written = written[: written.rfind(b"\n") + 1]  # a torn last line may be cut off
    subprocess.run(certify_command(synthetic_checkpoint, out), check=True,
                   stdout=subprocess.DEVNULL)
    reference = tmp_path / "reference.tsv"
    subprocess.run(certify_command(synthetic_checkpoint, reference), check=True,
                   stdout=subprocess.DEVNULL)
    assert rows(out) == rows(reference)  # exactly one complete row per image, same numbers
    assert out.read_bytes().startswith(written)  # the rows before the kill were not redone


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


def check_output_limit_is_one_error_and_rows_stay(ckpt: Path, out: Path, message: str,
                                                   free_space, skip: int = 8, **run) -> None:
    """Certification of every ``skip``-th image into ``out`` hits a write limit: one error line
    naming the file (exit 1), every row written before is kept; after ``free_space()`` the same
    command resumes."""
    command = certify_command(ckpt, out, "--n", "100", "--skip", str(skip))
    result = subprocess.run(command, capture_output=True, text=True, **run)
    assert result.returncode == 1
    err = result.stderr.strip().splitlines()
    assert len(err) == 1 and message in err[0] and str(out) in err[0], err
    written = out.read_bytes()
    written = written[: written.rfind(b"\n") + 1]
    assert written.count(b"\n") > 10  # the rows written before the limit are all there
    free_space()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    assert out.read_bytes().startswith(written)
    final = pd.read_csv(out, sep="\t")
    assert list(final["idx"]) == list(range(0, 512, skip))


def test_a_full_disk_is_one_clear_error_and_earlier_rows_stay(synthetic_checkpoint, tiny_disk):
    """Variant 1: a real 64 KiB tmpfs fills up (needs root and mount; skipped elsewhere). Two
    pages are left: one for the .meta.json, one for the rows, which 128 images' rows (about
    8 KB) overflow (64 images' rows are about 4,060 bytes, which may just fit)."""
    free = os.statvfs(tiny_disk).f_bavail * os.statvfs(tiny_disk).f_frsize
    (tiny_disk / "filler").write_bytes(b"\0" * (free - 2 * 4096))  # two pages left
    check_output_limit_is_one_error_and_rows_stay(
        synthetic_checkpoint, tiny_disk / "certify.tsv", "No space left on device",
        (tiny_disk / "filler").unlink, skip=4)


def test_a_file_size_limit_is_one_clear_error_and_earlier_rows_stay(synthetic_checkpoint,
                                                                     tmp_path):
    """Variant 2, which needs no mount: the kernel refuses to grow any file of the certifying
    process beyond 1,500 bytes (RLIMIT_FSIZE, with SIGXFSZ ignored the write fails EFBIG)."""
    import resource

    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1500, 1500))

    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    check_output_limit_is_one_error_and_rows_stay(
        synthetic_checkpoint, tmp_path / "certify.tsv", "File too large", lambda: None,
        preexec_fn=limit_file_size, env=env)


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
    command = [sys.executable, "-m", "smoothadv.cli.main",
               "train", str(config), "--out", str(trial),
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
    assert str(trial / "metrics.jsonl") in lines[0]  # epoch 1's first write: its line
    assert torch.load(trial / CHECKPOINT, weights_only=True)["epoch"] == 1  # epoch 0 done
    assert [json.loads(line)["epoch"] for line in
            (trial / "metrics.jsonl").read_text().splitlines()] == [0]
    remount(disk, "rw")  # the disk is back: the same command resumes at epoch 1 and finishes
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    assert [json.loads(line)["epoch"] for line in
            (trial / "metrics.jsonl").read_text().splitlines()] == [0, 1, 2]
