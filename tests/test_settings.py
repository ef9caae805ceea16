"""The certification and attack settings (`common.settings`): one definition of each block,
validated once, named as the user wrote it, recorded on disk exactly as before, torch-free."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from smoothadv.certify.attack import AttackSettings, run_attack
from smoothadv.certify.runner import Sampling, run_smoothing
from smoothadv.common.errors import UserError
from smoothadv.common.layout import meta_path
from smoothadv.sweep.spec import parse_spec
from smoothadv.sweep.spec_blocks import AttackEval
from smoothadv.trainers.config import CertifyConfig, parse_trial_config

ROOT = Path(__file__).resolve().parent.parent
IDENTITY = {"checkpoint_sha256": "ab" * 32, "dataset": "synthetic", "split": "test"}
SPEC = {"name": "tiny", "defaults": {"dataset": "synthetic", "arch": "lenet", "epochs": 1,
                                     "certify": {"n": 500}},
        "grid": {"sigma": [0.25, 0.5]},
        "attack_eval": {"epsilons": [1, 0.25], "m_test": 4, "skip": 8}}

# Written by the code before the settings module (now common.settings) existed (commit
# 0a00bcc) for the inputs below.
_SHA = '  "checkpoint_sha256": "' + "ab" * 32 + '",\n  "dataset": "synthetic",\n'
RECORDS = {
    "certify": '{\n  "alpha": 0.01,\n' + _SHA + '  "n": 200,\n  "n0": 20,\n  "seed": 3,\n'
               '  "sigma": 0.25,\n  "split": "test"\n}\n',
    "predict": '{\n  "alpha": 0.001,\n' + _SHA + '  "n": 300,\n  "seed": 0,\n  "sigma": 0.5,\n'
               '  "split": "test"\n}\n',
    "attack": '{\n  "alpha": 0.01,\n' + _SHA + '  "epsilons": [\n    1.0,\n    0.25,\n    0.0\n'
              '  ],\n  "m_test": 8,\n  "n": 100,\n  "seed": 2,\n  "sigma": 0.25,\n'
              '  "split": "test",\n  "steps": 3\n}\n',
}
SWEEP_YAML = (
    "name: tiny\ndefaults:\n  dataset: synthetic\n  arch: lenet\n  epochs: 1\n  certify:\n"
    "    n: 500\nresources:\n  workers: 1\n  gpus_per_worker: 0.0\n  cpus_per_worker: 1.0\n"
    "  worker_retries: 2\n  trial_retries: 0\ngrid:\n- sigma:\n  - 0.25\n  - 0.5\nexclude: []\n"
    "attack_eval:\n  epsilons:\n  - 1.0\n  - 0.25\n  steps: 20\n  m_test: 4\n  n: 1000\n"
    "  alpha: 0.001\n  skip: 8\n  max: -1\n")
# Since then the resources block gained max_concurrent, start_timeout_s and upload_every_s
# (issue 13); a sweep.yaml written without them still reads, with their defaults.
NEW_RESOURCE_KEYS = "  max_concurrent: 0\n  start_timeout_s: 3600.0\n  upload_every_s: 120.0\n"
# issue 15: sequential, target_radius; batch_size null (400 on the CPU, 4,096 on CUDA)
CERTIFY_BLOCK = ("n0: 100\nn: 1000\nalpha: 0.001\nbatch_size: null\nskip: 20\nmax: -1\n"
                 "sequential: true\ntarget_radius: null\n")


def test_sweep_plan_and_status_modules_load_without_torch():
    code = ("import sys, sweep.spec, sweep.status, common.settings; "
            "sys.exit('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT, timeout=120).returncode == 0


def test_pydantic_loads_with_the_first_block_read_not_with_the_modules():
    """The sweep driver imports sweep.spec: the typed reading (common.validation) adds no
    pydantic import to that, only to the first spec or config it reads."""
    code = ("import sys, smoothadv.sweep.spec as s, smoothadv.common.validation; "
            "before = 'pydantic' in sys.modules; "
            "s.parse_spec({'name': 'n', 'grid': {'sigma': [0.25]}}); "
            "sys.exit(10 * before + ('pydantic' not in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT, timeout=120).returncode == 0


def _record_as_before(path: Path, before: str) -> str:
    """The settings record at ``path`` limited to the keys written ``before`` (a key added
    since, such as another change's precision, is not this comparison's business)."""
    recorded = json.loads(meta_path(path).read_text())
    return json.dumps({k: recorded[k] for k in json.loads(before)}, indent=2,
                      sort_keys=True) + "\n"


def test_settings_records_are_byte_identical_to_before(tmp_path):
    model = torch.nn.Linear(2, 2)
    runs = {
        "certify": lambda out: run_smoothing(
            model, 2, [], [], Sampling(sigma=0.25, n=200, alpha=0.01, n0=20, seed=3), out,
            identity=IDENTITY, progress=False),
        "predict": lambda out: run_smoothing(
            model, 2, [], [], Sampling(sigma=0.5, n=300, alpha=0.001), out, identity=IDENTITY,
            progress=False),
        "attack": lambda out: run_attack(
            model, 2, [], [], AttackSettings(sigma=0.25, epsilons=(1, 0.25, -0.0), steps=3,
                                             m_test=8, n=100, alpha=0.01, seed=2), out,
            identity=IDENTITY, progress=False),
    }
    for name, run in runs.items():
        run(tmp_path / f"{name}.tsv")
        assert _record_as_before(tmp_path / f"{name}.tsv", RECORDS[name]) == RECORDS[name]


def test_sweep_yaml_and_certify_block_are_written_as_before():
    written = yaml.safe_dump(parse_spec(SPEC).to_dict(), sort_keys=False)
    assert written == SWEEP_YAML.replace("grid:\n", NEW_RESOURCE_KEYS + "grid:\n")
    assert parse_spec(yaml.safe_load(SWEEP_YAML)).to_dict() == parse_spec(SPEC).to_dict()
    config = parse_trial_config({"certify": {"n": 1000, "skip": 20}})
    assert yaml.safe_dump(config.to_dict()["certify"], sort_keys=False) == CERTIFY_BLOCK


def test_a_trial_certifies_and_attacks_with_its_blocks_and_its_sigma_and_seed():
    config = parse_trial_config({"sigma": 0.5, "seed": 3,
                                 "certify": {"n0": 20, "n": 200, "alpha": 0.01}})
    assert config.certify.with_noise(config.sigma, config.seed) == Sampling(
        sigma=0.5, n=200, alpha=0.01, n0=20, seed=3)
    block = parse_spec(SPEC).attack_eval
    assert AttackEval(**parse_spec(SPEC).to_dict()["attack_eval"]) == block  # via Ray's dict
    assert block.with_noise(0.5, 3) == AttackSettings(
        sigma=0.5, epsilons=(1.0, 0.25), steps=20, m_test=4, n=1000, alpha=0.001, seed=3)


@pytest.mark.parametrize("cls,values,prefix,message", [
    (CertifyConfig, {"n0": 0}, None, "certify.n0: must be ≥ 1"),
    (CertifyConfig, {"alpha": 0.5}, None, "certify.alpha: must lie in (0, 0.5)"),
    (Sampling, {"sigma": 0.25, "n": 0}, "", "n: must be ≥ 1"),
    (Sampling, {"sigma": 0.0, "n0": 0}, "certify.", "sigma: must be > 0"),  # the trial's key
    (AttackEval, {"epsilons": (0.5, 0.5)}, None, "attack_eval.epsilons: each radius once"),
    (AttackEval, {"m_test": 0}, None, "attack_eval.m_test: must be ≥ 1"),
    (AttackEval, {"alpha": 0.0}, None, "attack_eval.alpha: must lie in (0, 0.5)"),
    (AttackSettings, {"sigma": 0.25, "epsilons": (0.5, 0.5)}, "", "epsilon: each radius once"),
    (AttackSettings, {"sigma": 0.25, "epsilons": (-1,)}, "", "epsilon: must be finite and ≥ 0"),
])
def test_each_block_names_a_bad_value_as_its_caller_wrote_it(cls, values, prefix, message):
    """A block's own prefix by default (certify., attack_eval.); the command line's none."""
    settings = cls(**values)
    with pytest.raises(UserError) as info:
        settings.validate() if prefix is None else settings.validate(prefix)
    assert str(info.value).startswith(message)
