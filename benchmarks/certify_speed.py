"""Certification speed against its bound: the forward passes it cannot avoid.

CERTIFY on one image runs n0 + n noisy forward passes. The bound is the wall time of exactly
those forward passes (same batch sizes) on noise drawn in advance; the ratio certify / bound
shows what sampling, counting and the statistics cost on top. Target: ≤ 1.10.

It also prints certify's achieved FLOP/s (the FLOPs of one batch's forward pass of ``--batch``
noisy samples, counted by ``torch.utils.flop_counter``, times the batches certify ran) over the
dense-matmul FLOP/s measured in the same run on the same device and dtype (float32; TF32 on
CUDA where cuDNN's flag lets the convolutions use it): benchmarks/flops.py.

    python benchmarks/certify_speed.py [--device cuda] [--images 4] [--n 2000]
"""

from __future__ import annotations

import argparse
import time

import torch
from flops import Peaks, count_flops  # a sibling: run this file as a script
from smoothadv.certify import Smooth
from smoothadv.trainers import build_model


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def batch_sizes(num: int, batch: int) -> list[int]:
    return [batch] * (num // batch) + ([num % batch] if num % batch else [])


def time_bound(model, images, sigma, n0, n, batch, device) -> float:
    """Forward passes only, on noisy batches prepared before the clock starts."""
    sizes = batch_sizes(n0, batch) + batch_sizes(n, batch)
    total = 0.0
    with torch.inference_mode():
        for x in images:
            noisy = [x + sigma * torch.randn((b, *x.shape), device=device) for b in sizes]
            sync(device)
            t0 = time.perf_counter()
            for batch_input in noisy:
                model(batch_input).argmax(1)
            sync(device)
            total += time.perf_counter() - t0
    return total


def time_certify(model, images, sigma, n0, n, batch, device) -> float:
    smooth = Smooth(model, 10, sigma, generator=torch.Generator(device=device).manual_seed(0))
    sync(device)
    t0 = time.perf_counter()
    for x in images:
        smooth.certify(x, n0, n, 0.001, batch)
    sync(device)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--n0", type=int, default=100)
    parser.add_argument("--n", type=int, default=None, help="default 2,000 on CPU, 100,000 on GPU")
    parser.add_argument("--batch", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=3, help="report the best of this many")
    args = parser.parse_args()
    device = torch.device(args.device)
    n = args.n or (100_000 if device.type == "cuda" else 2_000)
    model = build_model("cifar_resnet20", "cifar10").to(device).eval()
    images = torch.rand((args.images, 3, 32, 32), generator=torch.Generator().manual_seed(0))
    images = images.to(device)
    sigma = 0.25
    time_certify(model, images[:1], sigma, args.n0, args.batch, args.batch, device)  # warm-up
    bound, certify = float("inf"), float("inf")
    for _ in range(args.repeats):  # alternate, so drifts in machine load hit both alike
        bound = min(bound, time_bound(model, images, sigma, args.n0, n, args.batch, device))
        certify = min(certify, time_certify(model, images, sigma, args.n0, n, args.batch, device))
    print(f"device {device}, ResNet-20, {args.images} images, n0={args.n0}, n={n}, "
          f"batch {args.batch}")
    print(f"forward passes only (bound): {bound:.3f} s   certify: {certify:.3f} s")
    print(f"ratio certify / bound: {certify / bound:.3f}   (target ≤ 1.10)")
    with torch.inference_mode():
        noisy = images[0] + sigma * torch.randn((args.batch, *images.shape[1:]), device=device)
        per_sample = count_flops(model, noisy) / args.batch
    flops = per_sample * (args.n0 + n) * args.images
    print(f"certify: {Peaks().line(flops, certify, device, torch.float32)}")


if __name__ == "__main__":
    main()
