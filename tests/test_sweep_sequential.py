"""A sweep trial certifies sequentially by default (issue 15 part 2): its certify.tsv has the
``samples`` column and its settings record the sequential settings; a file begun in the other
mode is refused, never mixed; a bad ``target_radius`` is one line naming the key."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
import torch
from smoothadv.common import layout
from smoothadv.common.errors import UserError
from smoothadv.sweep.trial_worker import certify_trial
from smoothadv.trainers.config import parse_trial_config

CONFIG = {"dataset": "synthetic", "arch": "lenet", "sigma": 0.25, "device": "cpu",
          "certify": {"n0": 16, "n": 400, "batch_size": 200, "skip": 64}}  # 8 images


def trial_folder(tmp_path, checkpoint):
    shutil.copy(checkpoint, tmp_path / layout.CHECKPOINT)
    return tmp_path


def test_a_trial_certifies_sequentially_by_default(tmp_path, synthetic_checkpoint):
    folder = trial_folder(tmp_path, synthetic_checkpoint)
    config = parse_trial_config({**CONFIG, "certify": {**CONFIG["certify"],
                                                       "target_radius": 0.3}})
    summary = certify_trial(config, folder, 0, 1, torch.device("cpu"))
    rows = pd.read_csv(folder / layout.CERTIFY, sep="\t")
    assert list(rows["idx"]) == list(range(0, 512, 64)) and summary["certified_images"] == 8
    assert rows["samples"].between(16, 416).all()
    assert (rows["samples"] < 416).any()  # some image was decided before all n samples
    record = json.loads(layout.meta_path(folder / layout.CERTIFY).read_text())
    assert record["sequential"] is True and record["target_radius"] == 0.3


def test_a_file_begun_without_sequential_is_refused_not_mixed(tmp_path, synthetic_checkpoint):
    """A trial's results file certified with sequential off is never finished with it on (or
    the reverse): the resume is refused in one line naming the file and the setting."""
    folder = trial_folder(tmp_path, synthetic_checkpoint)
    plain = {**CONFIG, "certify": {**CONFIG["certify"], "sequential": False, "max": 200}}
    certify_trial(parse_trial_config(plain), folder, 0, 1, torch.device("cpu"))
    before = (folder / layout.CERTIFY).read_bytes()
    assert len(pd.read_csv(folder / layout.CERTIFY, sep="\t")) == 4  # 0, 64, 128, 192
    with pytest.raises(UserError, match="sequential=False, this run asks for sequential=True"):
        certify_trial(parse_trial_config(CONFIG), folder, 0, 1, torch.device("cpu"))
    assert (folder / layout.CERTIFY).read_bytes() == before


@pytest.mark.parametrize("certify,message", [
    ({"sequential": False, "target_radius": 1.0}, "certify.target_radius: only with sequential"),
    ({"target_radius": 0.0}, "certify.target_radius: must be > 0"),
    ({"target_radius": float("inf")}, "certify.target_radius: expected a finite number"),
])
def test_a_bad_target_radius_is_one_line_naming_it(certify, message):
    with pytest.raises(UserError, match=message.replace(".", r"\.")):
        parse_trial_config({**CONFIG, "certify": {**CONFIG["certify"], **certify}})
