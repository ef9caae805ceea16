"""The kernel speed-ups of issue 15 (part 4) on one device, each against a baseline timed in the
same run.

- Training: one SmoothAdv-PGD ``train_batch`` of ResNet-110 on CIFAR-10-shaped data (batch 256,
  m = 4, T = 2), as ``build_training`` sets it up: float32 eager (the baseline, the default),
  ``amp: true`` (bfloat16 autocast on a channels-last model, as on a CPU too) and ``amp`` with
  ``compile``. Median of ``--repeats`` steps after warm-up steps (compilation included there).
- Certification: seconds per image of CERTIFY on ResNet-110 at n0 = 100, n = 100,000 (untrained
  weights: the cost does not depend on them) with Cohen et al.'s batch of 400 in float32 (the
  baseline), then the default batch for the device (certify.smooth.DEFAULT_BATCH: 4,096 on
  CUDA), then with ``--precision bf16``, then with ``--compile`` as well.

    .venv/bin/python benchmarks/gpu_speedups.py [--device cuda] [--images 2] [--quick]

Each line is followed by the variant's achieved FLOP/s against the dense-matmul FLOP/s measured
in the same run on the same device and dtype (benchmarks/flops.py): the FLOPs of one
``train_batch`` (attack and update), and of one certification batch's forward pass per noisy
sample times the n0 + n samples of an image, counted once in float32 eager (bf16 and compiled
variants do the same matmuls and convolutions); the peak in the variant's math: TF32 for the
float32 training step on CUDA (cuDNN's default, which training keeps), float32 for float32
certification (certify.precision turns TF32 off), bf16 for ``amp`` and ``bf16``.

``--quick`` (ResNet-20, batch 64, n = 2,000) is a smoke run for a CPU.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from flops import Peaks, count_flops  # a sibling: run this file as a script
from smoothadv.certify import Smooth
from smoothadv.certify.precision import evaluation_precision
from smoothadv.certify.smooth import batch_for
from smoothadv.trainers import build_model, dataset_info
from smoothadv.trainers import train as train_module
from smoothadv.trainers.compiled import compile_classifier
from smoothadv.trainers.config import parse_trial_config


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(step: Callable[[], None], device: torch.device) -> float:
    sync(device)
    t0 = time.perf_counter()
    step()
    sync(device)
    return time.perf_counter() - t0


def train_step_seconds(arch: str, batch: int, device: torch.device, repeats: int, *,
                       amp: bool, compile: bool) -> tuple[float, int | None]:
    """Median seconds of one ``train_batch`` of a model set up by ``build_training``, and the
    FLOPs of one (counted in float32 eager only; None otherwise: the same matmuls and
    convolutions)."""
    config = parse_trial_config({
        "dataset": "cifar10", "arch": arch, "method": "smoothadv", "attack": "pgd",
        "sigma": 0.25, "epsilon": 0.5, "steps": 2, "m_train": 4, "batch_size": batch,
        "device": str(device), "amp": amp, "compile": compile})
    info = dataset_info("cifar10")
    torch.manual_seed(0)
    state = train_module.build_training(build_model(arch, info), None, config, device, 1)
    x = torch.rand((batch, *info.input_shape), device=device)
    y = torch.randint(info.num_classes, (batch,), device=device)
    stats = {"loss": 0.0, "correct": 0, "samples": 0}

    def step() -> None:
        train_module.train_batch(state.model, state.optimizer, x, y, config, 0.5, stats)

    for _ in range(3):  # warm-up: allocator, cuDNN autotuning, compilation
        step()
    seconds = statistics.median(timed(step, device) for _ in range(repeats))
    return seconds, None if amp or compile else count_flops(step)


def certify_flops_per_sample(arch: str, device: torch.device, batch: int | None) -> float:
    """FLOPs of one certification batch's forward pass (float32), per noisy sample."""
    model = build_model(arch, "cifar10").to(device).eval()
    batch = batch_for(batch, device)
    with torch.inference_mode():
        return count_flops(model, torch.rand((batch, 3, 32, 32), device=device)) / batch


def certify_seconds(arch: str, device: torch.device, images: int, n: int, *,
                    batch: int | None, precision: str, compile: bool) -> float:
    """Seconds per image of CERTIFY (n0 = 100, ``n``, α = 0.001) on random images."""
    model = build_model(arch, "cifar10").to(device).eval()
    batch = batch_for(batch, device)
    xs = torch.rand((images, 3, 32, 32), generator=torch.Generator().manual_seed(0)).to(device)

    def context():
        return evaluation_precision(device, precision=precision)

    forward = model
    if compile:
        forward, compiled = compile_classifier(model, xs[:1].expand(batch, -1, -1, -1).clone(),
                                               context=context)
        if not compiled:
            return float("nan")
    smooth = Smooth(model, 10, 0.25, generator=torch.Generator(device=device).manual_seed(0),
                    device=device)
    smooth.base_classifier = forward
    with context():
        smooth.certify(xs[0], 100, min(n, 4 * batch), 0.001, batch)  # warm-up
        return timed(lambda: [smooth.certify(x, 100, n, 0.001, batch) for x in xs],
                     device) / images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--images", type=int, default=2, help="images certified per variant")
    parser.add_argument("--repeats", type=int, default=5, help="training steps timed")
    parser.add_argument("--quick", action="store_true", help="ResNet-20, batch 64, n = 2,000")
    args = parser.parse_args()
    device = torch.device(args.device)
    arch = "cifar_resnet20" if args.quick else "cifar_resnet110"
    batch, n = (64, 2000) if args.quick else (256, 100_000)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"{name}, torch {torch.__version__}; {arch}")

    print(f"\ntraining: one SmoothAdv-PGD train_batch (batch {batch}, m = 4, T = 2), "
          f"median of {args.repeats}")
    base, flops, peaks = None, None, Peaks()
    for label, amp, compile in (("float32 eager", False, False), ("amp", True, False),
                                ("amp + compile", True, True)):
        seconds, counted = train_step_seconds(arch, batch, device, args.repeats, amp=amp,
                                              compile=compile)
        base, flops = base or seconds, flops or counted
        print(f"  {label:<16} {seconds:8.3f} s   speed-up {base / seconds:5.2f}×", flush=True)
        dtype = torch.bfloat16 if amp else torch.float32
        print(f"    {peaks.line(flops, seconds, device, dtype)}", flush=True)

    images = f"{args.images} image{'s' if args.images > 1 else ''}"
    print(f"\ncertification: seconds per image at n0 = 100, n = {n:,} ({images})")
    base, per_sample = None, certify_flops_per_sample(arch, device, None)
    for label, batch_size, precision, compile in (
            ("batch 400 float32", 400, "float32", False),
            (f"batch {batch_for(None, device)} float32", None, "float32", False),
            (f"batch {batch_for(None, device)} bf16", None, "bf16", False),
            (f"batch {batch_for(None, device)} bf16 compiled", None, "bf16", True)):
        seconds = certify_seconds(arch, device, args.images, n, batch=batch_size,
                                  precision=precision, compile=compile)
        base = base or seconds
        print(f"  {label:<28} {seconds:8.3f} s/img   speed-up {base / seconds:5.2f}×",
              flush=True)
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        print(f"    {peaks.line(per_sample * (100 + n), seconds, device, dtype, tf32=False)}",
              flush=True)


if __name__ == "__main__":
    main()
