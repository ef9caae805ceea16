"""Faults that must never cost finished work (issue "Reliability"): damaged checkpoints."""

from __future__ import annotations

import pytest
import torch

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
