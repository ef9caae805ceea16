"""One training trial: the epochs of Gaussian augmentation (Cohen et al.), SmoothAdv
(Salman et al. 2019) or vanilla adversarial training, each loader batch trained by
trainers.step.train_batch (SmoothAdv's Pseudocode 1 with the batching of its reference script,
Hadisalman/smoothing-adversarial, code/train_pgd.py).

Self-training (``extra_data``, Carmon et al. 2019): each loader batch is half labelled, half
pseudo-labelled (trainers.self_training.mixed_batches).

Every epoch ends with an atomic checkpoint, then one JSON line of metrics. Each epoch's
randomness (shuffling, augmentation, noise) is seeded from (seed, epoch), so a run resumed from
an epoch checkpoint reproduces the uninterrupted run bit for bit on CPU (checkpoints therefore
store no generator state).

train_trial runs in named steps: prepare_folder (trainers.resume: refuse another run's folder,
or pick the model to start from or resume), load_trial_data, record_run (trainers.resume: only
now, every check passed, the folder and its config.yaml are written), build_training
(placement, DDP, optimizer and schedule), then per epoch run_epoch (epoch_batches,
train_batch) and finish_epoch (checkpoint, metrics line).

Under DDP (a torch process group of W ranks, as Ray Train sets up) ``batch_size`` stays the
global batch: each rank takes batch_size/W images of a shared shuffled order
(DistributedSampler), draws its own noise, attacks with the plain model and updates through the
DDP wrapper, whose all-reduce averages the gradients. Rank 0 writes checkpoints and metrics.

In-memory training images (``data_on_device``; by default wherever they fit) stay on the
training device and are cropped and flipped there a batch at a time (trainers.device_data), in
the loader's order. Otherwise, on CUDA, data loads in worker processes into pinned memory
(``loader_workers``; :func:`loader_options`); the CPU loads in the training process, so it
stays bit-for-bit reproducible (as does the device path on the CPU).

With ``amp`` (any device, off by default: float32 is the reference) the forward passes of the
attack and of the update run under bfloat16 autocast (:class:`Autocast`), on a channels-last
model (the CPU's layout anyway: trainers.models.place); a CPU run with ``amp`` still resumes
bit for bit. With ``compile`` (any device; unset, where the model is large enough and the trial
long enough to repay it: :func:`compiles`) the model trains through ``torch.compile``
(trainers.compiled.CompiledOrEager).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from smoothadv.common.layout import CHECKPOINT, METRICS
from smoothadv.trainers.checkpoint import save_checkpoint
from smoothadv.trainers.compiled import CompiledOrEager, training_repays_compiling
from smoothadv.trainers.config import TrialConfig
from smoothadv.trainers.datasets import load_dataset
from smoothadv.trainers.device import resolve_device
from smoothadv.trainers.device_data import DeviceImages, device_images
from smoothadv.trainers.models import place
from smoothadv.trainers.resume import prepare_folder, record_run, trim_metrics
from smoothadv.trainers.self_training import load_extra_data, mixed_batches
from smoothadv.trainers.step import attack_epsilon, train_batch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, Subset


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """The seed of one epoch's randomness on one DDP rank (rank 0: that of a single process)."""
    words = [seed, epoch] + ([rank] if rank else [])
    return int(np.random.SeedSequence(words).generate_state(1)[0])


def distributed_rank() -> tuple[int, int]:
    """(rank, world size) of this process: (0, 1) unless a torch process group is set up
    (Ray Train's TorchTrainer sets one up for multi-worker trials)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class Autocast(nn.Module):
    """``model`` with its forward passes under bfloat16 autocast, returning float32 logits, so
    losses and backward passes run outside autocast. bfloat16 has float32's exponent range,
    so no loss scaling is needed. Training wraps the plain model in it (inside DDP), so the
    attack, which runs on the unwrapped model, and the update both see it."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, dtype=torch.bfloat16):
            return self.model(x).float()


def loader_options(config: TrialConfig, device: torch.device, world: int) -> dict[str, Any]:
    """DataLoader options. On CUDA: ``loader_workers`` worker processes (null: min(8, this
    node's CPUs per GPU rank)), pinned memory, workers kept between iterations. On the CPU:
    none unless ``loader_workers`` is set, so loading stays in this process as always and runs
    reproduce bit for bit (workers draw augmentations from their own seeded generators, not
    from the stream the noise comes from, so a run with workers differs from one without)."""
    cuda = torch.device(device).type == "cuda"
    workers = config.loader_workers
    if workers is None:
        local_ranks = max(1, min(world, torch.cuda.device_count())) if cuda else 1
        workers = max(1, min(8, (os.cpu_count() or 1) // local_ranks)) if cuda else 0
    if not cuda and workers == 0:
        return {}
    return {"num_workers": workers, "pin_memory": cuda, "persistent_workers": workers > 0}


@torch.no_grad()
def noisy_accuracy(model: nn.Module, loader: DataLoader, sigma: float,
                   device: torch.device) -> float:
    """Accuracy of the base classifier on one noisy copy of each test image."""
    model.eval()
    correct = total = 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        correct += int((model(x + sigma * torch.randn_like(x)).argmax(1) == y).sum())
        total += len(y)
    return correct / max(total, 1)


def _subset(dataset, size: int | None):
    return dataset if size is None else Subset(dataset, range(min(size, len(dataset))))


@dataclass
class TrialData:
    """A trial's images: the labelled training set, the test loader of the epoch's noisy
    accuracy, the pseudo-labelled set (self-training, else None), each rank's labelled
    batch size, and the training images on the device (``data_on_device``; None: the
    loader path)."""

    train_set: Any
    test_loader: DataLoader
    extra_set: Any
    labelled_batch: int
    loader_options: dict[str, Any] = field(default_factory=dict)
    on_device: DeviceImages | None = None


@dataclass
class TrainingState:
    """What the epochs update: the plain model ``net`` and the one trained (``net`` itself,
    or its DDP wrapper), the optimizer, the LR schedule, and the first epoch still to run."""

    net: nn.Module
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    start_epoch: int


def compiles(config: TrialConfig, net: nn.Module, example: torch.Tensor, images: int,
             device: torch.device) -> bool:
    """``compile`` when set; unset, whether the trial repays compiling
    (trainers.compiled.training_repays_compiling): its epochs × ``images`` × (m·T attack
    passes, none for Gaussian augmentation, + m or 1 update passes) sample passes of ``net``
    on samples like ``example``."""
    if config.compile is not None:
        return config.compile
    attack = 0 if config.method == "gaussian" else config.m_train * config.steps
    update = config.m_train if config.multi_noise else 1
    return training_repays_compiling(place(net, device), example.to(device),
                                     config.epochs * images * (attack + update), device)


def build_training(net: nn.Module, ckpt: dict | None, config: TrialConfig,
                   device: torch.device, world: int, compile: bool | None = None
                   ) -> TrainingState:
    """``net`` placed on ``device`` (wrapped in DDP when ``world`` > 1), trained through
    ``torch.compile`` when ``compile`` (None: as ``config.compile``, unset meaning no), SGD
    and its StepLR schedule, both restored from ``ckpt`` when resuming."""
    net = place(net, device)
    trained: nn.Module = net
    if config.amp:  # bfloat16 forwards on channels-last convolutions (place() did the CPU's)
        net = net.to(memory_format=torch.channels_last)
        trained = Autocast(net)
    if compile or (compile is None and config.compile):  # inside DDP, so the attack (on the
        trained = CompiledOrEager(trained)  # unwrapped model) is compiled too
    model = trained if world == 1 else nn.parallel.DistributedDataParallel(
        trained, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = torch.optim.SGD(net.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, config.lr_step, config.lr_gamma)
    start_epoch = 0
    if ckpt is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        start_epoch = ckpt["epoch"]
    return TrainingState(net, model, optimizer, scheduler, start_epoch)


def load_trial_data(config: TrialConfig, world: int,
                    device: torch.device | None = None) -> TrialData:
    """The trial's training and test subsets and, with ``extra_data``, the pseudo-labelled set
    (augmented as the labelled set is); a labelled batch is half the batch under
    self-training, and each of ``world`` ranks takes its share. Loaders for ``device``
    (default: the CPU) get :func:`loader_options`; the training images go on ``device`` as
    ``data_on_device`` asks (trainers.device_data.device_images)."""
    device = device or torch.device("cpu")
    options = loader_options(config, device, world)
    train_set = _subset(load_dataset(config.dataset, "train", config.data_root),
                        config.train_subset)
    test_set = _subset(load_dataset(config.dataset, "test", config.data_root, augment=False),
                       config.epoch_test_subset)
    extra_set = None
    if config.extra_data is not None:
        labelled = train_set.dataset if isinstance(train_set, Subset) else train_set
        extra_set = load_extra_data(config.extra_data, config.dataset, labelled.transform)
    labelled_batch = config.batch_size if extra_set is None else config.batch_size // 2
    return TrialData(train_set, DataLoader(test_set, batch_size=config.batch_size, **options),
                     extra_set, max(1, labelled_batch // world), options,
                     device_images(config, train_set, device))


def epoch_batches(data: TrialData, config: TrialConfig, epoch: int, rank: int,
                  world: int) -> tuple[Iterable, int]:
    """Seed this rank's epoch randomness from (seed, epoch, rank); the epoch's ``(x, y,
    weight)`` batches (weight None without self-training) and their number.

    The shuffled order is seeded by (seed, epoch) alone: under DDP every rank shares it and
    takes its own equal share. With the images on the device the same loader runs over their
    indices, so its batches hold the same images in the same order, augmented there."""
    seed = epoch_seed(config.seed, epoch)
    torch.manual_seed(epoch_seed(config.seed, epoch, rank))
    on_device = data.on_device
    source = data.train_set if on_device is None else on_device.indices
    options = data.loader_options if on_device is None else {}
    if world == 1:
        loader = DataLoader(source, batch_size=data.labelled_batch, shuffle=True,
                            generator=torch.Generator().manual_seed(seed), **options)
    else:
        sampler = DistributedSampler(source, num_replicas=world, rank=rank, seed=seed)
        loader = DataLoader(source, batch_size=data.labelled_batch, sampler=sampler, **options)
    pairs = loader if on_device is None else on_device.batches(loader)
    batches = (((x, y, None) for x, y in pairs) if data.extra_set is None
               else mixed_batches(loader, data.extra_set, config.extra_weight,
                                  epoch_seed(config.seed, epoch, rank)))
    return batches, len(loader)


def run_epoch(state: TrainingState, data: TrialData, config: TrialConfig, epoch: int,
              rank: int, world: int, device: torch.device, progress: bool) -> dict[str, Any]:
    """Train one epoch and step the LR schedule; the epoch's metrics line (loss and accuracy
    over every rank's samples; the noisy test accuracy on rank 0 only)."""
    from tqdm import tqdm

    batches, n_batches = epoch_batches(data, config, epoch, rank, world)
    epsilon = attack_epsilon(config, epoch)
    stats = {"loss": 0.0, "correct": 0, "samples": 0}
    lr = state.optimizer.param_groups[0]["lr"]
    t0 = time.perf_counter()
    for x, y, w in tqdm(batches, desc=f"epoch {epoch + 1}/{config.epochs}", unit="batch",
                        total=n_batches, disable=not progress or rank != 0, leave=False):
        train_batch(state.model, state.optimizer, x.to(device, non_blocking=True),
                    y.to(device, non_blocking=True), config, epsilon, stats,
                    None if w is None else w.to(device))
    state.scheduler.step()
    seconds = time.perf_counter() - t0
    if world > 1:
        totals = torch.tensor([stats["loss"], stats["correct"], stats["samples"]],
                              dtype=torch.float64, device=device)
        torch.distributed.all_reduce(totals)
        stats = dict(zip(("loss", "correct", "samples"), totals.tolist(), strict=True))
    return {
        "epoch": epoch, "train_loss": stats["loss"] / stats["samples"],
        "train_acc": stats["correct"] / stats["samples"],
        "test_acc_noisy": (noisy_accuracy(state.net, data.test_loader, config.sigma, device)
                           if rank == 0 else None),
        "lr": lr, "epsilon": epsilon, "epoch_seconds": seconds,
        "samples_per_s": len(data.train_set) * (1 if data.extra_set is None else 2) / seconds,
        "world_size": world, "data_on_device": data.on_device is not None,
        "compiled": any(isinstance(m, CompiledOrEager) and m.compiled
                        for m in state.model.modules()),
        "finished_at": time.time(),  # wall clock (Unix time)
    }


def finish_epoch(out: Path, state: TrainingState, config: TrialConfig,
                 metrics: dict[str, Any]) -> None:
    """Record a finished epoch (rank 0): first its metrics line, flushed to disk, then its
    atomic checkpoint (keeping the previous one as a fallback), which commits the epoch. A
    crash between the two leaves a line past the checkpoint, which resuming trims and writes
    again; the other order could leave a checkpoint whose epoch has no line, for good."""
    with open(out / METRICS, "a", encoding="utf-8") as f:
        f.write(json.dumps(metrics) + "\n")
        f.flush()
        os.fsync(f.fileno())
    save_checkpoint(out / CHECKPOINT, state.net, arch=config.arch, dataset=config.dataset,
                    config=config.to_dict(), epoch=metrics["epoch"] + 1,
                    optimizer=state.optimizer, scheduler=state.scheduler, keep_previous=True)


def train_trial(config: TrialConfig, out_dir: str | Path,
                report: Callable[[dict[str, Any], Path], None] | None = None,
                progress: bool = True) -> dict[str, Any]:
    """Train (or resume) one trial in ``out_dir``; returns the last epoch's metrics.

    ``report(metrics, checkpoint_path)`` is called after every epoch (Ray Train's hook).
    """
    out = Path(out_dir)
    rank, world = distributed_rank()
    device = resolve_device(config.device)
    net, ckpt = prepare_folder(config, out, rank, device)
    data = load_trial_data(config, world, device)  # refuses a missing dataset, bad extra_data
    record_run(config, out, rank)  # nothing is written before every check passed
    state = build_training(net, ckpt, config, device, world,
                           compiles(config, net, data.train_set[0][0], len(data.train_set),
                                    device))
    if rank == 0:  # drop the lines of epochs after the checkpoint (a crash may leave some)
        trim_metrics(out / METRICS, state.start_epoch)
    metrics: dict[str, Any] = {}
    for epoch in range(state.start_epoch, config.epochs):
        metrics = run_epoch(state, data, config, epoch, rank, world, device, progress)
        if rank == 0:
            finish_epoch(out, state, config, metrics)
        if report is not None:
            report(metrics, out / CHECKPOINT)
    return metrics
