"""Faster kernels: opt-in torch.compile and bf16 certification, each recorded and never mixed
with other rows on resume; CUDA training's data loading and bfloat16 autocast.

Compiled and eager forward passes compute the same function, but inductor may fuse and reorder
float operations, so a noisy sample lying within rounding of a decision boundary can change its
argmax: their class counts are compared up to a small bound, not exactly (on this model they
usually agree exactly). bf16 rounds inputs and weights to 8 bits of mantissa, so more samples
move; the bound is stated where it is checked. The first compile on a machine fills inductor's
cache (about 20 s on 2 CPU cores); later runs take about a second.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from smoothadv.certify.precision import evaluation_precision, precision_name
from smoothadv.certify.runner import Sampling, run_smoothing
from smoothadv.certify.smooth import Smooth
from smoothadv.cli.main import main
from smoothadv.common.errors import UserError
from smoothadv.common.layout import meta_path
from smoothadv.trainers import build_model
from smoothadv.trainers import train as train_module
from smoothadv.trainers.compiled import CompiledOrEager, compile_classifier
from smoothadv.trainers.config import parse_trial_config
from torch import nn

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
ROOT = Path(__file__).resolve().parents[1]
N, BATCH = 4000, 500  # one batch shape, so one compilation


class TinyNet(nn.Module):
    """A small conv net on 3×8×8 images, 5 classes (its own class, so its compiled graphs are
    not shared with other tests' models)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(512, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def images(count: int = 4) -> list[tuple[torch.Tensor, int]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.rand(3, 8, 8, generator=g), i % 5) for i in range(count)]


def class_counts(model: nn.Module, forward=None, precision: str | None = None) -> torch.Tensor:
    """Each image's class counts among N noisy samples, the noise seeded per image."""
    generator = torch.Generator()
    smooth = Smooth(model, 5, 0.25, generator=generator, device="cpu")
    smooth.base_classifier = forward or model
    counts = []
    with evaluation_precision("cpu", precision=precision):
        for i, (x, _) in enumerate(images()):
            generator.manual_seed(i)
            counts.append(smooth.sample_counts(x, N, BATCH))
    return torch.stack(counts)


def flips(a: torch.Tensor, b: torch.Tensor) -> int:
    """Samples whose class differs (each moves one count out of a class and into another)."""
    return int((a - b).abs().sum()) // 2


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return TinyNet().eval()


def test_compiled_counts_agree_with_eager(model):
    notices = []
    forward, compiled = compile_classifier(model, torch.zeros(BATCH, 3, 8, 8),
                                           notify=notices.append)
    if not compiled:
        pytest.skip(f"no working compiler here: {notices}")
    assert notices == []
    eager = class_counts(model)
    # float reordering may flip a rare boundary sample: at most 0.5% of all samples
    assert flips(class_counts(model, forward), eager) <= 0.005 * eager.sum()
    assert forward.compiled  # no fallback happened


def test_a_compilation_failing_mid_run_falls_back_to_eager_once(model):
    """The probe compiles; a later (re)compilation fails: the run goes on eagerly, exactly."""
    calls = []

    def backend(graph, example_inputs):
        calls.append(1)
        if len(calls) > 1:
            raise RuntimeError("compiler vanished")
        return graph.forward

    notices = []
    forward, compiled = compile_classifier(model, torch.zeros(7, 3, 8, 8), backend=backend,
                                           notify=notices.append)
    assert compiled
    assert torch.equal(class_counts(model, forward), class_counts(model))
    assert len(notices) == 1 and "\n" not in notices[0]
    assert "compiler vanished" in notices[0] and "eager" in notices[0]


def cli_args(command: str, ckpt, out, *extra: str) -> list[str]:
    args = [command, str(ckpt), "--sigma", "0.25", "--n", "200", "--alpha", "0.01", "--batch",
            "100", "--skip", "64", "--max", "200", "--out", str(out), "--no-progress",
            "--device", "cpu"]
    return [*args, *(["--n0", "20"] if command == "certify" else []), *extra]


def rows(path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t").drop(columns="time")


def test_without_a_compiler_certify_compile_falls_back_with_one_line(synthetic_checkpoint,
                                                                     tmp_path):
    """Inductor on CPU needs a C++ compiler: CXX naming a missing one makes it fail (CC alone
    does not: inductor compiles with CXX, default g++); a fresh cache dir makes it compile."""
    eager, compiled = tmp_path / "eager.tsv", tmp_path / "compiled.tsv"
    assert main(cli_args("certify", synthetic_checkpoint, eager)) == 0
    env = {**os.environ, "CXX": "/nonexistent/c++", "TORCHINDUCTOR_CACHE_DIR": str(tmp_path),
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "smoothadv.cli.main",
                           *cli_args("certify", synthetic_checkpoint, compiled, "--compile")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    notices = [ln for ln in done.stderr.splitlines() if ln.startswith("smoothadv:")]
    assert len(notices) == 1, done.stderr
    assert "torch.compile unavailable" in notices[0] and "C++ compiler" in notices[0]
    pd.testing.assert_frame_equal(rows(compiled), rows(eager))
    record = json.loads(meta_path(compiled).read_text())
    assert record["compiled"] is False
    assert json.loads(meta_path(eager).read_text())["compiled"] is False


def test_bf16_counts_agree_with_float32_and_are_recorded(model, tmp_path):
    float32, bf16 = class_counts(model), class_counts(model, precision="bf16")
    # bfloat16 moves a sample only within ~2⁻⁸ of a logit tie: at most 1% of the samples per
    # image (measured: under 0.4%), and every image keeps its top class
    assert all(flips(a, b) <= 0.01 * N for a, b in zip(bf16, float32, strict=True))
    assert torch.equal(bf16.argmax(1), float32.argmax(1))
    out = tmp_path / "bf16.tsv"
    run_smoothing(model, 5, images(), range(4), Sampling(sigma=0.25, n=N, n0=100, alpha=0.01),
                  out, batch_size=BATCH, progress=False, precision="bf16")
    assert json.loads(meta_path(out).read_text())["precision"] == "bfloat16"
    assert len(pd.read_csv(out, sep="\t")) == 4


def test_bf16_forward_passes_run_under_autocast():
    seen = []

    class Spy(nn.Module):
        def forward(self, x):
            seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
            return torch.zeros(len(x), 2)

    with evaluation_precision("cpu", precision="bf16"):
        Spy()(torch.zeros(1, 3))
    with evaluation_precision("cpu"):
        Spy()(torch.zeros(1, 3))
    assert seen == [(True, torch.bfloat16), (False, torch.get_autocast_dtype("cpu"))]


@pytest.mark.parametrize("first,then,says", [
    ([], ["--precision", "bf16"], "precision='bfloat16'"),
    (["--precision", "bf16"], [], "precision='float32'"),
])
def test_resuming_with_another_precision_is_refused(synthetic_checkpoint, tmp_path, capsys,
                                                    first, then, says):
    out = tmp_path / "c.tsv"
    assert main(cli_args("certify", synthetic_checkpoint, out, "--max", "70", *first)) == 0
    before = out.read_bytes()
    capsys.readouterr()
    assert main(cli_args("certify", synthetic_checkpoint, out, *then)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(out) in err and says in err
    assert out.read_bytes() == before


def test_allow_tf32_is_precision_tf32_and_contradicting_it_is_refused(synthetic_checkpoint,
                                                                      tmp_path, capsys):
    out = tmp_path / "c.tsv"
    assert main(cli_args("predict", synthetic_checkpoint, out, "--max", "70",
                         "--allow-tf32")) == 0
    assert main(cli_args("predict", synthetic_checkpoint, out, "--precision", "tf32")) == 0
    assert len(pd.read_csv(out, sep="\t")) == 4  # resumed: the same record on the CPU
    capsys.readouterr()
    assert main(cli_args("predict", synthetic_checkpoint, tmp_path / "d.tsv", "--allow-tf32",
                         "--precision", "bf16")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--allow-tf32" in err
    # the names recorded on CUDA (computed without one)
    assert {precision_name("cuda", allow_tf32=True), precision_name("cuda", precision="tf32"),
            precision_name("cuda"), precision_name("cuda", precision="bf16"),
            precision_name("cpu", precision="tf32")} == {"tf32", "float32", "bfloat16"}
    assert precision_name("cuda", allow_tf32=True) == precision_name("cuda", precision="tf32")
    assert precision_name("cuda") == precision_name("cpu", precision="tf32") == "float32"


def predict(model, out, **kwargs):
    return run_smoothing(model, 5, images(), range(kwargs.pop("count", 4)),
                         Sampling(sigma=0.25, n=BATCH, alpha=0.01), out, batch_size=BATCH,
                         progress=False, **kwargs)


@pytest.mark.parametrize("first,then", [(False, True), (True, False)])
def test_compiled_and_eager_rows_are_never_mixed(model, tmp_path, first, then):
    out = tmp_path / "p.tsv"
    predict(model, out, compile=first, count=2)
    recorded = json.loads(meta_path(out).read_text())
    if first:
        if not recorded["compiled"]:
            pytest.skip("no working compiler here")
    else:
        assert recorded["compiled"] is False
    before = out.read_bytes()
    with pytest.raises(UserError, match="compiled") as refused:
        predict(model, out, compile=then)
    assert "\n" not in str(refused.value)
    assert out.read_bytes() == before
    predict(model, out, compile=first)  # the same setting resumes
    assert len(pd.read_csv(out, sep="\t")) == 4


# --- training -------------------------------------------------------------------------------

TRAIN = {"dataset": "synthetic", "arch": "lenet", "sigma": 0.25, "epsilon": 0.25, "steps": 2,
         "m_train": 2, "batch_size": 8, "train_subset": 16, "epoch_test_subset": 8}


def autocast_seen(device: str, **overrides
                  ) -> set[tuple[bool, torch.dtype | None, bool, torch.dtype]]:
    """(autocast on, its dtype, first conv weight channels-last, the dtype of the first conv's
    activations) at every forward pass of one SmoothAdv train step (its attack's passes and its
    update's)."""
    config = parse_trial_config({**TRAIN, "device": device, **overrides})
    net = build_model("lenet", "synthetic")
    seen = set()
    conv = next(m for m in net.modules() if isinstance(m, nn.Conv2d))
    conv.register_forward_hook(lambda module, args, out: seen.add(
        (torch.is_autocast_enabled(device),
         torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None,
         module.weight.is_contiguous(memory_format=torch.channels_last), out.dtype)))
    state = train_module.build_training(net, None, config, torch.device(device), world=1)
    x, y = torch.rand(8, 1, 16, 16, device=device), torch.randint(4, (8,), device=device)
    stats = {"loss": 0.0, "correct": 0, "samples": 0}
    train_module.train_batch(state.model, state.optimizer, x, y, config, 0.25, stats)
    assert stats["samples"] == 16 and all(p.grad is not None for p in net.parameters())
    return seen


def test_cpu_training_is_float32_by_default_bf16_with_amp_and_loads_in_process():
    f32, bf16 = torch.float32, torch.bfloat16  # place(): channels-last on CPU either way
    assert autocast_seen("cpu") == {(False, None, True, f32)}
    assert autocast_seen("cpu", amp=True) == {(True, bf16, True, bf16)}
    config = parse_trial_config({**TRAIN, "device": "cpu"})
    assert not config.amp and config.loader_workers is None
    assert train_module.loader_options(config, torch.device("cpu"), 1) == {}
    two = parse_trial_config({**TRAIN, "loader_workers": 2})
    assert train_module.loader_options(two, torch.device("cpu"), 1) == {
        "num_workers": 2, "pin_memory": False, "persistent_workers": True}
    with pytest.raises(UserError, match="loader_workers"):
        parse_trial_config({**TRAIN, "loader_workers": -1})


@cuda
def test_cuda_train_step_runs_under_bf16_autocast_channels_last():
    assert autocast_seen("cuda", amp=True) == {(True, torch.bfloat16, True, torch.bfloat16)}
    assert autocast_seen("cuda") == {(False, None, False, torch.float32)}  # the default
    config = parse_trial_config({**TRAIN, "device": "cuda"})
    options = train_module.loader_options(config, torch.device("cuda"), 1)
    assert options["pin_memory"] and options["persistent_workers"]
    assert 1 <= options["num_workers"] <= 8


def train_steps(compile_model, steps: int = 3) -> nn.Module:
    """``steps`` SmoothAdv-PGD train steps of a fresh LeNet (fixed seeds), the model trained
    through ``compile_model(model)`` (None: eagerly); returns the plain trained net."""
    config = parse_trial_config({**TRAIN, "device": "cpu"})
    torch.manual_seed(0)
    net = build_model("lenet", "synthetic")
    state = train_module.build_training(net, None, config, torch.device("cpu"), world=1)
    model = state.model if compile_model is None else compile_model(state.model)
    stats = {"loss": 0.0, "correct": 0, "samples": 0}
    for step in range(steps):
        torch.manual_seed(step)
        x, y = torch.rand(8, 1, 16, 16), torch.randint(4, (8,))
        train_module.train_batch(model, state.optimizer, x, y, config, 0.25, stats)
    return net


def test_compile_true_trains_through_the_compiler_to_the_eager_weights():
    config = parse_trial_config({**TRAIN, "device": "cpu", "compile": True})
    state = train_module.build_training(build_model("lenet", "synthetic"), None, config,
                                        torch.device("cpu"), world=1)
    assert isinstance(state.model, CompiledOrEager) and state.model.module is state.net
    assert state.model.state_dict().keys() == {f"module.{k}" for k in state.net.state_dict()}
    notices = []
    compiled = train_steps(lambda m: CompiledOrEager(m, notify=notices.append))
    if notices:
        pytest.skip(f"no working compiler here: {notices}")
    eager = train_steps(None)
    for (name, a), b in zip(compiled.state_dict().items(), eager.state_dict().values(),
                            strict=True):  # the attack's and the update's passes, compiled
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5), name


def test_a_training_compilation_failure_trains_eagerly_saying_so_once():
    def backend(graph, example_inputs):
        raise RuntimeError("no compiler here")

    notices = []
    fallen = train_steps(lambda m: CompiledOrEager(m, backend=backend, notify=notices.append))
    eager = train_steps(None)
    assert all(torch.equal(a, b) for a, b in zip(fallen.state_dict().values(),
                                                 eager.state_dict().values(), strict=True))
    assert len(notices) == 1 and "no compiler here" in notices[0] and "eager" in notices[0]
