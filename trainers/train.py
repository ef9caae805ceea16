"""One training trial: Gaussian augmentation (Cohen et al.), SmoothAdv (Pseudocode 1) and vanilla
adversarial training, with the batching of SmoothAdv's reference script
(Hadisalman/smoothing-adversarial, code/train_pgd.py; docs/reference-facts.md, "Batching").

Per loader batch of B images, split into m chunks of about B/m images: each chunk, each image
repeated m times with its own fresh noise, is attacked; with ``multi_noise`` each chunk then takes
its own SGD step on its B/m × m noisy attacked samples, otherwise the first noisy copy of every
image is kept and one SGD step is taken on the B images. The noise of a chunk is drawn once and
used in every attack step and in the update (Pseudocode 1, footnote 4).

Self-training (``extra_data``, Carmon et al. 2019): each loader batch is half labelled, half
pseudo-labelled (trainers.self_training.mixed_batches); both halves are attacked alike and the
loss weights each example, 1 labelled and ``extra_weight`` pseudo-labelled (see _sgd_step).

Every epoch ends with an atomic checkpoint, then one JSON line of metrics. Each epoch's
randomness (shuffling, augmentation, noise) is seeded from (seed, epoch), so a run resumed from
an epoch checkpoint reproduces the uninterrupted run bit for bit on CPU (checkpoints therefore
store no generator state).

train_trial runs in named steps: prepare_folder (refuse another run's folder, or pick the model
to start from or resume), load_trial_data, record_run (only now, every check passed, the folder
and its config.yaml are written), build_training (placement, DDP, optimizer and schedule), then
per epoch run_epoch (epoch_batches, train_batch) and finish_epoch (checkpoint, metrics line).

Under DDP (a torch process group of W ranks, as Ray Train sets up) ``batch_size`` stays the
global batch: each rank takes batch_size/W images of a shared shuffled order
(DistributedSampler), draws its own noise, attacks with the plain model and updates through the
DDP wrapper, whose all-reduce averages the gradients. Rank 0 writes checkpoints and metrics.

On CUDA only: data loads in worker processes into pinned memory (``loader_workers``;
:func:`loader_options`); the CPU loads in the training process, so it stays bit-for-bit
reproducible. With ``amp`` (any device, off by default: float32 is the reference) the forward
passes of the attack and of the update run under bfloat16 autocast (:class:`Autocast`), on a
channels-last model (the CPU's layout anyway: trainers.models.place); a CPU run with ``amp``
still resumes bit for bit. With ``compile`` (any device, off by default) the model trains
through ``torch.compile`` (trainers.compiled.CompiledOrEager).
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
import yaml
from smoothadv.common.atomic import atomic_write_bytes
from smoothadv.common.errors import UserError
from smoothadv.common.layout import CHECKPOINT, CONFIG, METRICS
from smoothadv.common.records import read_metrics
from smoothadv.common.yaml_input import read_yaml_file
from smoothadv.trainers import attacks
from smoothadv.trainers.checkpoint import (
    CheckpointMismatch,
    model_from_checkpoint,
    previous_path,
    save_checkpoint,
)
from smoothadv.trainers.compiled import CompiledOrEager
from smoothadv.trainers.config import TrialConfig, parse_trial_config
from smoothadv.trainers.datasets import dataset_info, load_dataset
from smoothadv.trainers.device import resolve_device
from smoothadv.trainers.models import build_model, place, reset_head
from smoothadv.trainers.self_training import load_extra_data, mixed_batches
from torch import nn
from torch.nn import functional as F
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


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside a DistributedDataParallel wrapper."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


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


def attack_epsilon(config: TrialConfig, epoch: int) -> float:
    """ε warm-up: in epoch e (0-based) the attack uses min(ε, (e+1)·ε/warmup)."""
    if config.warmup_epochs == 0:
        return config.epsilon
    return min(config.epsilon, (epoch + 1) * config.epsilon / config.warmup_epochs)


def attack_chunk(model: nn.Module, x: torch.Tensor, y: torch.Tensor, noise: torch.Tensor,
                 config: TrialConfig, epsilon: float) -> torch.Tensor:
    """x̂ for one chunk, per the trial's method (identity for Gaussian augmentation).

    Under DDP the attack runs on the plain model: its passes never enter DDP's forward, so
    they neither trigger collectives nor touch the gradient reducer's bookkeeping."""
    if config.method == "gaussian" or epsilon == 0:
        return x
    model = unwrap(model)
    if config.method == "vanilla_adv":
        return attacks.vanilla_pgd(model, x, y, epsilon, config.steps)
    if config.attack == "ddn":
        return attacks.smoothadv_ddn(model, x, y, noise, epsilon, config.steps,
                                     quantize_levels=256 if config.ddn_quantize else None,
                                     within_epsilon=config.ddn_within_epsilon)
    return attacks.smoothadv_pgd(model, x, y, noise, epsilon, config.steps,
                                 gradient_free_sigma=config.sigma if config.gradient_free else None)


def _sgd_step(model, optimizer, inputs, targets, stats,
              weights: torch.Tensor | None = None) -> None:
    """One SGD step on cross-entropy; with per-example ``weights`` w_i the loss is
    (1/n) Σ_i w_i·CE_i over the n inputs (Carmon et al.'s robust self-training code: weight 1
    for labelled, ``extra_weight`` for pseudo-labelled examples, normalized by batch size)."""
    model.train()
    logits = model(inputs)
    if weights is None:
        loss = F.cross_entropy(logits, targets)
    else:
        loss = (weights * F.cross_entropy(logits, targets, reduction="none")).sum() / len(targets)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    stats["loss"] += float(loss.detach()) * len(targets)
    stats["correct"] += int((logits.argmax(1) == targets).sum())
    stats["samples"] += len(targets)


def train_batch(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor,
                y: torch.Tensor, config: TrialConfig, epsilon: float, stats: dict,
                weights: torch.Tensor | None = None) -> None:
    """One loader batch, batched as in the reference script (module docstring); ``weights``
    are per-example loss weights (self-training), following each image into its chunk."""
    m = config.m_train
    kept_x, kept_y, kept_w = [], [], []
    for chunk in torch.arange(len(y), device=y.device).tensor_split(m):
        if len(chunk) == 0:
            continue
        xc, yc = x[chunk], y[chunk]
        noise = config.sigma * torch.randn((len(chunk), m, *x.shape[1:]), device=x.device)
        x_hat = attack_chunk(model, xc, yc, noise, config, epsilon)
        noisy = x_hat.unsqueeze(1) + noise  # the same noise as in the attack
        wc = [] if weights is None else [weights[chunk]]
        if config.multi_noise:
            _sgd_step(model, optimizer, noisy.flatten(0, 1), yc.repeat_interleave(m), stats,
                      *(w.repeat_interleave(m) for w in wc))
        else:
            kept_x.append(noisy[:, 0])
            kept_y.append(yc)
            kept_w += wc
    if not config.multi_noise:
        _sgd_step(model, optimizer, torch.cat(kept_x), torch.cat(kept_y), stats,
                  *([torch.cat(kept_w)] if kept_w else []))


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


def _initial_model(config: TrialConfig, device: torch.device) -> nn.Sequential:
    """A fresh model, or (fine-tuning, SmoothAdv Table 2) the ``init_from`` model with its input
    layer kept as pre-trained and, with ``reinit_head``, a new final layer."""
    if config.init_from is None:
        return build_model(config.arch, config.dataset).to(device)
    # its arch is the trial's own; an import path as its dataset only if it is the trial's
    model, ckpt = model_from_checkpoint(
        config.init_from, arch=config.arch, device=device, trust=(config.dataset,),
        trust_hint="a pre-training dataset is trusted only as the trial's own dataset")
    info = dataset_info(config.dataset)
    if dataset_info(ckpt["dataset"]).input_shape[0] != info.input_shape[0]:
        raise UserError(f"init_from: {config.init_from} takes {ckpt['dataset']} images, whose "
                        f"channels differ from {config.dataset}'s")
    if config.reinit_head:
        reset_head(model, info.num_classes)
    elif ckpt["num_classes"] != info.num_classes:
        raise UserError(f"init_from: {config.init_from} has {ckpt['num_classes']} classes, "
                        f"{config.dataset} has {info.num_classes}; set reinit_head: true")
    return model  # its input layer too: the pre-trained layers see inputs as they learned them


def resume_point(ckpt_path: Path, config: TrialConfig, device: torch.device,
                 say: Callable[[str], None] | None = print) -> tuple[nn.Module, dict] | None:
    """The model and checkpoint to resume from: the newest readable of ``ckpt_path`` and the
    previous one kept beside it (saying so when falling back); None when neither exists.

    A checkpoint of another architecture or dataset is never skipped over: that is a wrong
    folder, not a damaged file."""
    candidates = [p for p in (ckpt_path, previous_path(ckpt_path)) if p.exists()]
    failures = []
    for path in candidates:
        try:
            model, ckpt = model_from_checkpoint(path, arch=config.arch, dataset=config.dataset,
                                                device=device)
        except CheckpointMismatch:
            raise
        except UserError as e:
            failures.append(str(e))
            continue
        if failures and say is not None:
            say(f"{failures[0]}; resuming from the previous checkpoint {path} "
                f"(epoch {ckpt['epoch']})")
        return model, ckpt
    if failures:
        raise UserError(f"{failures[0]}; no readable checkpoint left to resume from"
                        + (f" ({failures[1]})" if len(failures) > 1 else ""))
    return None


def _trim_metrics(path: Path, before_epoch: int) -> None:
    """Keep only metric lines of epochs that have a checkpoint (a crash may leave later ones)."""
    if not path.exists():
        return
    # read_metrics refuses a damaged complete line, naming it, and leaves out a torn last one;
    # json.dumps gives back each line as finish_epoch wrote it (json.dumps of the same dict)
    lines = [json.dumps(m) for m in read_metrics(path) if m["epoch"] < before_epoch]
    atomic_write_bytes(path, lambda f: f.write("".join(ln + "\n" for ln in lines).encode()))


# Keys a re-run into an existing folder may change: none of them changes the trained model
# (nor, for certify's batch_size, a certified row: a folder recorded with Cohen et al.'s 400,
# the default before it became device-dependent, resumes with the new default).
RESUMABLE_CHANGES = ("epochs", "device", "data_root", "loader_workers", "compile")
RESUMABLE_CERTIFY_CHANGES = ("batch_size",)


def check_same_run(config: TrialConfig, out: Path) -> None:
    """Refuse to train into ``out`` when its ``config.yaml`` (the run's record) differs from
    ``config`` in a key that changes the model: resuming would mix two runs' settings in one
    checkpoint. Keys absent from an older record count as their defaults."""
    path = out / CONFIG
    if not path.is_file():
        return
    values = read_yaml_file(path) or {}  # a refusal names the file
    if not isinstance(values, dict):
        raise UserError(f"{path}: cannot read the run's recorded config (not a mapping)")
    for key in ("arch", "dataset"):  # compared before validating imports an import path
        if key in values and values[key] != getattr(config, key):
            raise UserError(f"{path}: {key} is {values[key]!r} in this run, "
                            f"{getattr(config, key)!r} now; a run folder holds one model: "
                            "use another output folder")
    try:
        recorded = parse_trial_config(values)
    except UserError as e:
        raise UserError(f"{path}: cannot read the run's recorded config ({e})") from None
    old, new = recorded.to_dict(), config.to_dict()
    for record in (old, new):
        record["certify"] = {k: v for k, v in record["certify"].items()
                             if k not in RESUMABLE_CERTIFY_CHANGES}
    for key in new:
        if key not in RESUMABLE_CHANGES and old[key] != new[key]:
            raise UserError(f"{path}: {key} is {old[key]!r} in this run, {new[key]!r} now; "
                            f"a run folder holds one model (only {', '.join(RESUMABLE_CHANGES)} "
                            f"may change on resume): use another output folder")


@dataclass
class TrialData:
    """A trial's images: the labelled training set, the test loader of the epoch's noisy
    accuracy, the pseudo-labelled set (self-training, else None) and each rank's labelled
    batch size."""

    train_set: Any
    test_loader: DataLoader
    extra_set: Any
    labelled_batch: int
    loader_options: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainingState:
    """What the epochs update: the plain model ``net`` and the one trained (``net`` itself,
    or its DDP wrapper), the optimizer, the LR schedule, and the first epoch still to run."""

    net: nn.Module
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    start_epoch: int


def prepare_folder(config: TrialConfig, out: Path, rank: int,
                   device: torch.device) -> tuple[nn.Module, dict | None]:
    """Refuse ``out`` when it holds another run; otherwise the model to train and the
    checkpoint it resumes from (None for a fresh run, whose model is seeded by
    ``config.seed``; ``init_from`` read and checked). Writes nothing: :func:`record_run`
    creates the folder once every check (the data's too) has passed."""
    check_same_run(config, out)
    torch.manual_seed(config.seed)
    resumed = resume_point(out / CHECKPOINT, config, device, say=print if rank == 0 else None)
    net, ckpt = resumed if resumed is not None else (_initial_model(config, device), None)
    return net, ckpt


def record_run(config: TrialConfig, out: Path, rank: int) -> None:
    """Create the folder ``out`` and (rank 0) write the run's ``config.yaml``, the record
    :func:`check_same_run` compares a re-run with. Only after every check of the run passed:
    a refused run leaves nothing that would refuse its corrected re-run."""
    out.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        config_yaml = yaml.safe_dump(config.to_dict(), sort_keys=False).encode()
        atomic_write_bytes(out / CONFIG, lambda f: f.write(config_yaml))


def build_training(net: nn.Module, ckpt: dict | None, config: TrialConfig,
                   device: torch.device, world: int) -> TrainingState:
    """``net`` placed on ``device`` (wrapped in DDP when ``world`` > 1), SGD and its StepLR
    schedule, both restored from ``ckpt`` when resuming."""
    net = place(net, device)
    trained: nn.Module = net
    if config.amp:  # bfloat16 forwards on channels-last convolutions (place() did the CPU's)
        net = net.to(memory_format=torch.channels_last)
        trained = Autocast(net)
    if config.compile:  # inside DDP, so the attack (on the unwrapped model) is compiled too
        trained = CompiledOrEager(trained)
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
    (default: the CPU) get :func:`loader_options`."""
    options = loader_options(config, device or torch.device("cpu"), world)
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
                     extra_set, max(1, labelled_batch // world), options)


def epoch_batches(data: TrialData, config: TrialConfig, epoch: int, rank: int,
                  world: int) -> tuple[Iterable, int]:
    """Seed this rank's epoch randomness from (seed, epoch, rank); the epoch's ``(x, y,
    weight)`` batches (weight None without self-training) and their number.

    The shuffled order is seeded by (seed, epoch) alone: under DDP every rank shares it and
    takes its own equal share."""
    seed = epoch_seed(config.seed, epoch)
    torch.manual_seed(epoch_seed(config.seed, epoch, rank))
    if world == 1:
        loader = DataLoader(data.train_set, batch_size=data.labelled_batch, shuffle=True,
                            generator=torch.Generator().manual_seed(seed), **data.loader_options)
    else:
        sampler = DistributedSampler(data.train_set, num_replicas=world, rank=rank, seed=seed)
        loader = DataLoader(data.train_set, batch_size=data.labelled_batch, sampler=sampler,
                            **data.loader_options)
    batches = (((x, y, None) for x, y in loader) if data.extra_set is None
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
        "world_size": world, "finished_at": time.time(),  # wall clock (Unix time)
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
    state = build_training(net, ckpt, config, device, world)
    if rank == 0:  # drop the lines of epochs after the checkpoint (a crash may leave some)
        _trim_metrics(out / METRICS, state.start_epoch)
    metrics: dict[str, Any] = {}
    for epoch in range(state.start_epoch, config.epochs):
        metrics = run_epoch(state, data, config, epoch, rank, world, device, progress)
        if rank == 0:
            finish_epoch(out, state, config, metrics)
        if report is not None:
            report(metrics, out / CHECKPOINT)
    return metrics
