"""How fast does an epoch's training data arrive: the DataLoader path against the images held on
the device (a trial's ``data_on_device``, trainers.device_data)?

CIFAR-sized random uint8 data (default 50,000 × 32×32×3, 10 classes) with the paper's
augmentation (4-pixel zero-padded random crop, horizontal flip), batch 256: each path yields the
epoch's batches as training receives them (trainers.train.epoch_batches: augmented, float32 in
[0,1], on ``--device``), and the loop only moves each batch there and waits for it. The loader
path has trainers.train.loader_options (the CPU: in-process, as training does; CUDA: worker
processes into pinned memory). The paths take turns for ``--rounds`` rounds of ``--batches``
batches each (a new epoch each round), so both see the same machine load; each path's
images/s is its best round, and the device path's speed-up is their ratio.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/data_path_speed.py [--device cuda]
        [--images 50000] [--batch 256] [--rounds 10] [--batches 10]

Measured with the defaults on the CPU (shared 2-core AMD EPYC, torch 2.14, otherwise idle:
load average 0.7): with ``OMP_NUM_THREADS=2`` the loader path 11,967 and 12,121 images/s, the
device path 124,556 and 121,753, a speed-up of 10.4× and 10.0× in two runs; with
``OMP_NUM_THREADS=1`` 11,584 against 78,239 images/s, 6.8×. Hence trainers/config.py's
``data_on_device: null`` holds the images on the device on the CPU too. On the same machine
busy with other work (load average 2.4 to 8 on its 2 cores) the device path's 2-thread figure
ranged from 3,800 to 96,000 images/s, the loader's from 6,000 to 10,600 (0.5× to 9.4×): each
of the device path's few multi-threaded operations per batch waits for both threads, while the
loader's per-image operations are too small to be split (a training step's own operations
wait likewise).
"""

from __future__ import annotations

import argparse
import itertools
import time

import numpy as np
import torch
from smoothadv.trainers.config import TrialConfig
from smoothadv.trainers.datasets import ArrayDataset, _small_image_transform
from smoothadv.trainers.device_data import device_images
from smoothadv.trainers.train import TrialData, epoch_batches, loader_options


def _rate(data: TrialData, config: TrialConfig, device: torch.device, epoch: int,
          batches: int) -> float:
    """Images per second over the first ``batches`` batches of epoch ``epoch``'s
    ``epoch_batches``, each moved to ``device`` (a no-op for the device path's)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    stream, _ = epoch_batches(data, config, epoch, rank=0, world=1)
    seen = 0
    for x, y, _ in itertools.islice(stream, batches):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        seen += len(y)
    sync()
    return seen / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--images", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--batches", type=int, default=None,
                        help="batches per round and path (default: 10 on the CPU; on CUDA the "
                        "whole epoch, whose loader starts its worker processes anew)")
    parser.add_argument("--rounds", type=int, default=10,
                        help="rounds, each timing both paths in turn (best round kept)")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.batches is None:
        args.batches = 10 if device.type == "cpu" else -(-args.images // args.batch)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.images, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, args.images).astype(np.int64)
    train_set = ArrayDataset(images, labels, _small_image_transform(32, train=True))
    config = TrialConfig(dataset="cifar10", batch_size=args.batch, device=args.device,
                         data_on_device=True)
    options = loader_options(config, device, world=1)
    paths = {
        "loader": TrialData(train_set, None, None, args.batch, options),
        "device": TrialData(train_set, None, None, args.batch, options,
                            device_images(config, train_set, device)),
    }
    rates: dict[str, float] = dict.fromkeys(paths, 0.0)
    for epoch in range(args.rounds):  # interleaved, so both paths see the same machine load
        for name, data in paths.items():
            rates[name] = max(rates[name], _rate(data, config, device, epoch, args.batches))
    print(f"{args.images:,} images 32×32×3 uint8, batch {args.batch}, crop+flip, on {device} "
          f"({torch.get_num_threads()} threads); best of {args.rounds} rounds of "
          f"{args.batches} batches per path:")
    for name, rate in rates.items():
        print(f"  {name:6s} path {rate:12,.0f} images/s")
    print(f"  device path / loader path: {rates['device'] / rates['loader']:.1f}×")


if __name__ == "__main__":
    main()
