"""Fraction-of-peak reporting (benchmarks/flops.py, issue 25 item 3) and the packing benchmark's
arithmetic (benchmarks/trials_per_gpu.py, item 2): FLOPs counted against their closed forms, a
measured peak, the printed ratio, trials per hour from the trials' epoch records."""

from __future__ import annotations

import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


flops = _load("flops")
packing = _load("trials_per_gpu")


def test_linear_forward_flops_are_the_closed_form():
    batch, fan_in, fan_out = 8, 64, 32
    layer = nn.Linear(fan_in, fan_out)
    assert flops.count_flops(layer, torch.randn(batch, fan_in)) == 2 * batch * fan_in * fan_out


def test_conv_forward_flops_are_the_closed_form():
    batch, c_in, c_out, k, size = 4, 3, 16, 3, 12
    conv = nn.Conv2d(c_in, c_out, k, stride=2, padding=1)
    x = torch.randn(batch, c_in, size, size)
    h_out = w_out = (size + 2 * 1 - k) // 2 + 1
    assert flops.count_flops(conv, x) == 2 * batch * c_out * h_out * w_out * c_in * k * k


def test_forward_and_backward_are_three_forwards_for_a_linear_layer():
    layer = nn.Linear(64, 32)
    x = torch.randn(8, 64, requires_grad=True)

    def train_step():  # gradients of the input and of the weights: two more matmuls
        layer(x).square().sum().backward()

    forward = flops.count_flops(layer, x.detach())
    assert flops.count_flops(train_step) == pytest.approx(3 * forward, rel=0.01)


def test_the_peak_is_a_positive_finite_rate():
    peak = flops.matmul_peak("cpu", torch.float32, size=128, seconds=0.05, repeats=2)
    assert math.isfinite(peak) and peak > 0
    assert flops.precision_label("cpu", "float32") == "float32"
    assert flops.precision_label("cpu", torch.bfloat16) == "bf16"


def test_the_line_reports_achieved_over_peak():
    line = flops.flops_line(3.0e9, 0.5, 4.0e10, "cpu", "float32")
    assert line.startswith("achieved 6.0 GFLOP/s = 3.000e+09 FLOPs / 0.5 s; ")
    assert "dense-matmul peak 40.0 GFLOP/s (cpu, " in line and ", float32)" in line
    assert flops.fraction_of_peak(line) == pytest.approx(6.0e9 / 4.0e10, abs=5e-4)


def test_peaks_are_measured_once_per_device_and_precision(monkeypatch):
    calls = []
    monkeypatch.setattr(flops, "matmul_peak", lambda device, dtype, **kw: calls.append(dtype)
                        or 1e10)
    peaks = flops.Peaks()
    peaks.line(1e9, 1.0, "cpu", torch.float32)
    line = peaks.line(2e9, 1.0, "cpu", torch.float32)
    peaks.line(1e9, 1.0, "cpu", torch.bfloat16)
    assert calls == [torch.float32, torch.bfloat16]
    assert flops.fraction_of_peak(line) == pytest.approx(0.2)


def _epochs(start: float, seconds: list[float]) -> list[dict]:
    rows, t = [], start
    for i, s in enumerate(seconds):
        t += s + 0.5  # half a second of noisy test accuracy after each epoch
        rows.append({"epoch": i, "epoch_seconds": s, "finished_at": t})
    return rows


def test_trials_per_hour_from_the_epochs_seconds():
    # two trials, each 10 s per epoch while both train, 3 epochs: 30 s of training each
    trials = [_epochs(100.0, [10.0, 10.0, 10.0]), _epochs(101.0, [10.0, 10.0, 10.0])]
    result = packing.packing_result(trials)
    assert result.trial_seconds == pytest.approx(30.0)
    assert result.per_hour == pytest.approx(2 * 3600 / 30.0)
    assert result.concurrent == pytest.approx(1.0, abs=0.1)


def test_a_trial_training_alone_does_not_count_as_packed():
    # the second trial starts when the first has finished: no epoch of either ran beside the
    # other, so the timing is the one-trial one and says so
    trials = [_epochs(0.0, [5.0, 5.0]), _epochs(20.0, [5.0, 5.0])]
    result = packing.packing_result(trials)
    assert result.concurrent < 0.5
    assert result.per_hour == pytest.approx(2 * 3600 / 10.0)


def test_epochs_inside_the_shared_window_set_the_pace():
    # the first trial trains alone for its first epoch (fast), then beside the second (slow);
    # only the epochs all trials shared count, scaled to the trial's epochs
    first = _epochs(0.0, [4.0, 8.0, 8.0, 8.0])
    second = _epochs(4.0, [8.0, 8.0, 8.0, 4.0])
    result = packing.packing_result([first, second])
    assert result.trial_seconds == pytest.approx(32.0)
    assert packing.speedup(result.per_hour, 3600 / 20.0) == pytest.approx(2 * 20.0 / 32.0)


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds processes through /proc")
def test_processes_a_sweep_leaves_behind_are_found_by_their_tag_and_ended():
    tag = "test-flops-leftover"
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                             env={**os.environ, packing.TAG: tag})
    try:
        assert packing.leftovers(tag, wait_s=0.2) == [child.pid]
        assert child.wait(timeout=10) != 0  # ended by the benchmark
        assert packing.leftovers("another-tag", wait_s=0) == []
    finally:
        child.kill()
        child.wait()
