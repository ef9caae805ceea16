"""Certification precision is explicit: full float32 unless ``--allow-tf32``, recorded in
FILE.meta.json, and a results file whose record lacks it is refused on resume.

The CUDA tests (skipped without CUDA; benchmarks/gpu_checks.sh runs them) check the TF32 flags
of matmul and cuDNN inside the base classifier's forward passes, and that the previous flags
are restored afterwards.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from smoothadv.certify.attack import AttackSettings, run_attack
from smoothadv.certify.runner import Sampling, run_smoothing
from smoothadv.cli.main import main
from smoothadv.common.layout import meta_path
from torch import nn

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def cli_args(command: str, ckpt, out, *extra: str) -> list[str]:
    args = [command, str(ckpt), "--sigma", "0.25", "--n", "100", "--alpha", "0.01", "--batch",
            "50", "--skip", "64", "--max", "130", "--out", str(out), "--no-progress"]
    if command == "certify":
        args += ["--n0", "10"]
    if command == "attack":
        args += ["--epsilon", "0.25", "--steps", "2", "--m-test", "4"]
    return [*args, *extra]


@pytest.mark.parametrize("command", ["certify", "predict", "attack"])
@pytest.mark.parametrize("extra", [[], ["--allow-tf32"]])
def test_cpu_runs_record_float32(synthetic_checkpoint, tmp_path, command, extra):
    out = tmp_path / f"{command}.tsv"
    assert main(cli_args(command, synthetic_checkpoint, out, "--device", "cpu", *extra)) == 0
    assert json.loads(meta_path(out).read_text())["precision"] == "float32"
    assert len(pd.read_csv(out, sep="\t")) >= 3


@pytest.mark.parametrize("command", ["certify", "attack"])
def test_resuming_a_file_recorded_without_precision_is_refused(synthetic_checkpoint, tmp_path,
                                                               capsys, command):
    """A record without the precision cannot tell whether its rows came from a TF32 GPU run,
    so it is refused like any other settings change."""
    out = tmp_path / f"{command}.tsv"
    args = cli_args(command, synthetic_checkpoint, out, "--device", "cpu")
    assert main([*args, "--max", "70"]) == 0
    meta = json.loads(meta_path(out).read_text())
    del meta["precision"]
    meta_path(out).write_text(json.dumps(meta))
    before, meta_before = out.read_bytes(), meta_path(out).read_bytes()
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert str(out) in err and "no precision" in err and "precision='float32'" in err
    assert out.read_bytes() == before and meta_path(out).read_bytes() == meta_before


class FlagRecorder(nn.Module):
    """A linear rule on 1×2×4 inputs that records (matmul TF32, cuDNN TF32) at every forward."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(8, 2)
        self.seen: set[tuple[bool, bool]] = set()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.add((torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32))
        return self.linear(x.flatten(1))


def images() -> list[tuple[torch.Tensor, int]]:
    g = torch.Generator().manual_seed(0)
    return [(torch.rand((1, 2, 4), generator=g), i % 2) for i in range(3)]


@pytest.fixture
def tf32_flags():
    """Saves and restores the process's TF32 flags around a test."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def set_flags(matmul: bool, cudnn: bool) -> None:
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


def flags() -> tuple[bool, bool]:
    return torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32


def run(kind: str, model: nn.Module, out, allow_tf32: bool) -> None:
    if kind == "certify":
        run_smoothing(model, 2, images(), range(3), Sampling(sigma=0.25, n=200, alpha=0.01, n0=20),
                      out, batch_size=64, progress=False, device="cuda", allow_tf32=allow_tf32)
    else:
        run_attack(model, 2, images(), range(3),
                   AttackSettings(sigma=0.25, epsilons=(0.5,), steps=3, m_test=4, n=200,
                                  alpha=0.01), out, batch_size=64, progress=False, device="cuda",
                   allow_tf32=allow_tf32)


@cuda
@pytest.mark.parametrize("kind", ["certify", "attack"])
@pytest.mark.parametrize("allow_tf32,before,recorded", [
    (False, (True, True), "float32"), (False, (True, False), "float32"),
    (True, (False, False), "tf32"), (True, (False, True), "tf32")])
def test_cuda_forward_passes_see_the_asked_precision_and_flags_are_restored(
        tmp_path, tf32_flags, kind, allow_tf32, before, recorded):
    model = FlagRecorder().cuda()
    set_flags(*before)
    out = tmp_path / f"{kind}.tsv"
    run(kind, model, out, allow_tf32)
    assert model.seen == {(allow_tf32, allow_tf32)}
    assert flags() == before
    assert json.loads(meta_path(out).read_text())["precision"] == recorded


@cuda
def test_cuda_flags_are_restored_when_a_forward_pass_fails(tmp_path, tf32_flags):
    class Broken(FlagRecorder):
        def forward(self, x):
            super().forward(x)
            raise RuntimeError("boom")

    model = Broken().cuda()
    set_flags(True, True)
    with pytest.raises(RuntimeError, match="boom"):
        run("certify", model, tmp_path / "c.tsv", False)
    assert model.seen == {(False, False)}
    assert flags() == (True, True)


@cuda
@pytest.mark.parametrize("extra,recorded", [([], "float32"), (["--allow-tf32"], "tf32")])
def test_cuda_cli_records_the_precision(synthetic_checkpoint, tmp_path, tf32_flags, extra,
                                        recorded):
    for command in ("certify", "attack"):
        out = tmp_path / f"{command}.tsv"
        assert main(cli_args(command, synthetic_checkpoint, out, "--device", "cuda", *extra)) == 0
        assert json.loads(meta_path(out).read_text())["precision"] == recorded
