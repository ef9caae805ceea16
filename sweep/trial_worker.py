"""The Ray Train worker loop of one trial: train (resuming), certify, optionally attack.

Runs on every rank of the trial's worker group. Training reports each epoch with a checkpoint
(a Ray Train ``report``, a barrier: every rank calls it equally often). After the last epoch
the test images selected by the ``certify`` block are split across ranks; each rank certifies
its share into its own resumable file, rank 0 merges them into ``certify.tsv`` and reports
certified accuracy at a few radii and the ACR as the trial's final metrics.

With a ``schedule`` block (sweep.early_stopping), rank 0 certifies the checkpoint of each rung
epoch on a proxy subset of the test set before reporting that epoch, and adds the proxy's
certified accuracy to the epoch's metrics, from which the sweep driver's scheduler may stop
the trial.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from smoothadv.certify.runner import Evaluation, load_evaluation, run_smoothing
from smoothadv.common import layout
from smoothadv.common.atomic import atomic_write_bytes
from smoothadv.common.layout import CHECKPOINT
from smoothadv.common.metrics import (
    certified_accuracy,
    certified_summary,
    empirical_accuracy,
    right_rows,
)
from smoothadv.common.schedule_file import stopped_entries
from smoothadv.sweep import faults
from smoothadv.sweep.spec_blocks import AttackEval, EarlyStopping, StagedCertification
from smoothadv.sweep.storage import Bucket
from smoothadv.sweep.trial_sync import TrialSync, worker_copy
from smoothadv.sweep.trial_task import TrialTask
from smoothadv.trainers.config import CertifyConfig, TrialConfig
from smoothadv.trainers.train import train_trial


def _shard_path(trial_dir: Path, name: str, rank: int, world: int) -> Path:
    return trial_dir / layout.shard_name(name, rank, world)


def merge_shards(trial_dir: Path, name: str, world: int) -> None:
    """Rank 0: write ``name`` (and its settings record) from the ranks' shard files, rows
    sorted by image index; the shards stay, so a re-run can resume and merge again."""
    header, rows = None, {}
    for r in range(world):
        shard = _shard_path(trial_dir, name, r, world)
        lines = shard.read_text(encoding="utf-8").splitlines()
        header = lines[0]
        columns = header.split("\t")
        extra = [columns.index("epsilon")] if "epsilon" in columns else []  # attack rows
        for line in lines[1:]:
            fields = line.split("\t")
            rows[(int(fields[0]), *(float(fields[i]) for i in extra))] = line
    meta = layout.meta_path(_shard_path(trial_dir, name, 0, world)).read_bytes()
    body = "".join(rows[k] + "\n" for k in sorted(rows))
    atomic_write_bytes(layout.meta_path(trial_dir / name), lambda f: f.write(meta))
    atomic_write_bytes(trial_dir / name, lambda f: f.write(f"{header}\n{body}".encode()))


def gathered(trial_dir: Path, name: str, rank: int, world: int,
             sync: TrialSync | None = None) -> bool:
    """Once every rank has written its shard of ``name``, rank 0 merges them; True on rank 0
    (the one rank that reads the merged file). With a bucket each rank uploads its shard first
    and rank 0 copies the others' down."""
    if sync is not None:
        sync.push()
    if world > 1:
        torch.distributed.barrier()
        if rank == 0:
            if sync is not None:
                sync.fetch(*(n for r in range(1, world)
                             for n in _shard_names(trial_dir, name, r, world)))
            merge_shards(trial_dir, name, world)
    return rank == 0


def _shard_names(trial_dir: Path, name: str, rank: int, world: int) -> list[str]:
    shard = _shard_path(trial_dir, name, rank, world).name
    return [shard, f"{shard}{layout.META}"]


def _final_model(config: TrialConfig, trial_dir: Path, skip: int, max_index: int,
                 device: torch.device) -> Evaluation:
    return load_evaluation(trial_dir / CHECKPOINT, arch=config.arch, dataset=config.dataset,
                           data_root=config.data_root, skip=skip, max_index=max_index,
                           device=str(device))


def certify_trial(config: TrialConfig, trial_dir: Path, rank: int, world: int,
                  device: torch.device, sync: TrialSync | None = None, *,
                  certify: CertifyConfig | None = None, name: str = layout.CERTIFY,
                  plan: str = layout.CERTIFY_PLAN) -> dict[str, float]:
    """CERTIFY this rank's share of the selected test images into ``name`` (settings:
    ``certify``, by default the trial's block); rank 0 merges and summarizes."""
    c = certify or config.certify
    ev = _final_model(config, trial_dir, c.skip, c.max, device)
    out = _shard_path(trial_dir, name, rank, world)
    sampling = c.sampling(config.sigma, config.seed)
    if rank == 0:
        layout.write_json(trial_dir / plan, {"planned": len(ev.indices)})
    share = ev.indices[rank::world]
    if faults.armed("hold_certified", trial_dir.name):  # a test parks the trial after its
        run_smoothing(ev.model, ev.num_classes, ev.images, share[:1], sampling, out,  # first
                      batch_size=c.batch_size, identity=ev.identity, progress=False,  # row
                      device=ev.device)
        faults.maybe_fail("hold_certified", 1, trial_dir.name)
    run_smoothing(ev.model, ev.num_classes, ev.images, share, sampling, out,
                  batch_size=c.batch_size, identity=ev.identity, progress=False, device=ev.device)
    if not gathered(trial_dir, name, rank, world, sync):
        return {}
    return certified_summary(pd.read_csv(trial_dir / name, sep="\t"))


def screening(config: TrialConfig, stages: StagedCertification) -> CertifyConfig:
    """Stage 1's settings (sweep.stages): every ``stages.skip``-th image with ``stages.n``
    samples, not sequential (the selection reads each image's vote count back from its
    pA_lower, which a sequential row's early look does not give)."""
    return dataclasses.replace(config.certify, n=stages.n, skip=stages.skip, sequential=False,
                               target_radius=None)


def certify_stage(stage: int, stages: StagedCertification | None, config: TrialConfig,
                  trial_dir: Path, rank: int, world: int, device: torch.device,
                  sync: TrialSync | None) -> dict[str, float]:
    """The certification of ``stage`` (0: an unstaged sweep's, the trial's ``certify``
    block): 1 screens, 2 certifies in full, 3 extends the full certification to every
    ``stages.final_skip``-th image (the rows already there are kept: each image's noise is
    seeded by its index, so the file reads as one run at the finer skip)."""
    if stage == 1:
        return certify_trial(config, trial_dir, rank, world, device, sync,
                             certify=screening(config, stages), name=layout.CERTIFY_STAGE1,
                             plan=layout.CERTIFY_STAGE1_PLAN)
    certify = None if stage < 3 else dataclasses.replace(config.certify,
                                                         skip=stages.final_skip)
    return certify_trial(config, trial_dir, rank, world, device, sync, certify=certify)


def attack_trial(config: TrialConfig, attack_eval: AttackEval, trial_dir: Path, rank: int,
                 world: int, device: torch.device,
                 sync: TrialSync | None = None) -> dict[str, float]:
    """The spec's empirical attack (paper Section 4.3) on this rank's share of the images;
    rank 0 merges and returns the empirical accuracy per ε."""
    from smoothadv.certify.attack import run_attack

    ev = _final_model(config, trial_dir, attack_eval.skip, attack_eval.max, device)
    settings = attack_eval.with_noise(config.sigma, config.seed)
    out = _shard_path(trial_dir, layout.ATTACK, rank, world)
    run_attack(ev.model, ev.num_classes, ev.images, ev.indices[rank::world], settings, out,
               batch_size=config.certify.batch_size, identity=ev.identity, progress=False,
               device=ev.device)
    if not gathered(trial_dir, layout.ATTACK, rank, world, sync):
        return {}
    accuracy = empirical_accuracy(pd.read_csv(trial_dir / layout.ATTACK, sep="\t"))
    return {f"attack_acc_{eps:g}": float(row["accuracy"]) for eps, row in accuracy.iterrows()}


def certify_proxy(config: TrialConfig, schedule: EarlyStopping, checkpoint: Path, epoch: int,
                  rung: int, device: torch.device) -> dict[str, float]:
    """Rank 0 after ``epoch`` epochs, a rung of ``schedule``: certify ``checkpoint`` on the
    proxy (every k-th test image, about ``schedule.images``; not sequential; the trial's σ and
    seed) into ``proxy_e<epoch>.tsv`` (resumed like any results file; rows of another
    checkpoint, left by a run that trained this epoch before, are discarded) and return
    ``proxy_rung`` and ``proxy_cert_acc_<r>`` at the schedule's radii for the trial's σ."""
    ev = load_evaluation(checkpoint, arch=config.arch, dataset=config.dataset,
                         data_root=config.data_root, device=str(device))
    out = checkpoint.parent / layout.proxy_name(epoch)
    before = layout.read_json(layout.meta_path(out))
    if before is not None and before.get("checkpoint_sha256") != ev.identity[
            "checkpoint_sha256"]:
        out.unlink(missing_ok=True)
        layout.meta_path(out).unlink(missing_ok=True)
    c = dataclasses.replace(config.certify, n0=schedule.n0, n=schedule.n,
                            alpha=schedule.alpha, sequential=False, target_radius=None)
    indices = ev.indices[::schedule.proxy_skip(len(ev.indices))]
    run_smoothing(ev.model, ev.num_classes, ev.images, indices,
                  c.sampling(config.sigma, config.seed), out, batch_size=c.batch_size,
                  identity=ev.identity, progress=False, device=ev.device)
    rows = pd.read_csv(out, sep="\t")
    radii = schedule.radii_for(config.sigma, config.certify.target_radius)
    accuracy = certified_accuracy(rows["radius"].to_numpy(dtype=float), right_rows(rows), radii)
    return {"proxy_rung": rung, "proxy_images": len(rows),
            **{f"proxy_cert_acc_{r:g}": float(a) for r, a in zip(radii, accuracy, strict=True)}}


def _restore_from_ray(trial_dir: Path) -> None:
    """If the trial folder lost its checkpoint but Ray Train kept one, put it back."""
    import ray.train

    ray_ckpt = ray.train.get_checkpoint()
    if ray_ckpt is None or (trial_dir / CHECKPOINT).exists():
        return
    with ray_ckpt.as_directory() as d:
        if (Path(d) / CHECKPOINT).exists():
            shutil.copy2(Path(d) / CHECKPOINT, trial_dir / CHECKPOINT)


def _record_node(trial_dir: Path) -> None:
    """Rank 0: add where this start of the trial's workers runs to nodes.jsonl (Ray node id
    and IP, pid, time, and the node's CUDA, cuDNN and GPU model); a worker group restarted
    elsewhere, after a node died, adds a line."""
    import json
    import time

    import ray
    from smoothadv.common.provenance import hardware

    line = {"node_id": ray.get_runtime_context().get_node_id(),
            "node_ip": ray.util.get_node_ip_address(), "pid": os.getpid(),
            "started_at": time.time(), **hardware()}
    with open(trial_dir / layout.NODES, "a", encoding="utf-8") as f:
        f.write(json.dumps(line) + "\n")


def run_on_worker(task: TrialTask) -> None:
    """What each Ray Train worker runs (sweep.train_loop.train_loop_per_worker): this node's
    copy of the trial set up, then :func:`train_and_certify`. For a sweep in a bucket the
    worker works in this node's copy of the trial (sweep.trial_sync)."""
    import ray.train
    import ray.train.torch

    torch.set_num_threads(task.threads)  # Ray rounds a fractional CPU share down
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    config = task.config
    if config.device == "auto":
        config = dataclasses.replace(config, device=str(ray.train.torch.get_device()))
    trial_dir = Path(task.trial_dir)
    sync = None
    if task.trial_uri:
        trial_dir = worker_copy(task.trial_uri)
        sync = TrialSync(trial_dir, Bucket(task.trial_uri), lineage=task.trial_id, rank=rank,
                         every_s=task.upload_every_s)
        if context.get_local_rank() == 0:
            sync.pull()
        if world > 1:
            torch.distributed.barrier()  # the node's copy is complete before anyone reads it
    if rank == 0:
        _restore_from_ray(trial_dir)
        _record_node(trial_dir)
    if sync is not None:
        sync.start()
    try:
        train_and_certify(task, config, trial_dir, rank, world, sync)
    finally:
        if sync is not None:
            sync.stop()


class StoppedEarly(Exception):
    """The sweep's early-stopping schedule stopped this trial (sweep.early_stopping)."""


def stopped_by_schedule(task: TrialTask, trial: str, rank: int, world: int) -> bool:
    """Whether the schedule's record (``schedule.json`` in the sweep folder, or its bucket)
    names ``trial`` as stopped, as rank 0 read it: every rank gets rank 0's answer, so all
    leave the epoch loop at the same epoch. The trial then ends as a finished Train run, which
    frees its workers' resources (Tune stopping the trial's actor would strand them)."""
    stopped = False
    if rank == 0:
        if task.trial_uri:
            sweep = Bucket(task.trial_uri.rsplit(f"/{layout.TRIALS}/", 1)[0])
            data = sweep.read_bytes(layout.SCHEDULE)
        else:
            path = Path(task.trial_dir).parent.parent / layout.SCHEDULE
            data = path.read_bytes() if path.exists() else None
        try:  # a damaged record stops nothing here (the driver's scheduler refuses it)
            record = json.loads(data) if data else None
        except ValueError:
            record = None
        stopped = trial in stopped_entries(record)
    if world > 1:
        flag = [stopped]
        torch.distributed.broadcast_object_list(flag, src=0)
        stopped = flag[0]
    return stopped


def train_and_certify(task: TrialTask, config: TrialConfig, trial_dir: Path, rank: int,
                      world: int, sync: TrialSync | None) -> None:
    """The trial on this rank: train (reporting each epoch, certifying a proxy at each rung of
    the schedule and leaving when the schedule stopped the trial), then certify the final model
    for its stage and, in stages 0 and 2, run the spec's attack; report the results."""
    import ray.train

    schedule = task.schedule
    rungs = {} if schedule is None else schedule.rung_epochs(config.epochs)
    first_rung = min(rungs, default=None)

    def report(metrics: dict[str, Any], ckpt_path: Path) -> None:
        faults.maybe_fail("after_epoch", metrics["epoch"], trial_dir.name)
        faults.maybe_fail("kill_after_epoch", metrics["epoch"], trial_dir.name)
        if rank != 0:  # (its report waits for rank 0's, which may certify a proxy first)
            ray.train.report(metrics)
            return
        rung = rungs.get(metrics["epoch"] + 1)
        if rung is not None:  # the Tune scheduler judges the trial on the proxy
            metrics = {**metrics, **certify_proxy(config, schedule, ckpt_path,
                                                  metrics["epoch"] + 1, rung,
                                                  torch.device(config.device))}
        with tempfile.TemporaryDirectory() as d:
            try:
                os.link(ckpt_path, Path(d) / CHECKPOINT)
            except OSError:
                shutil.copy2(ckpt_path, Path(d) / CHECKPOINT)
            if sync is not None:  # the checkpoint and its metrics line, before the barrier
                sync.push()
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))

    def report_then_check(metrics: dict[str, Any], ckpt_path: Path) -> None:
        report(metrics, ckpt_path)
        faults.maybe_fail("hold_after_epoch", metrics["epoch"], trial_dir.name)
        if (first_rung is not None and metrics["epoch"] + 1 >= first_rung
                and stopped_by_schedule(task, trial_dir.name, rank, world)):
            raise StoppedEarly

    try:
        train_trial(config, trial_dir, report=report_then_check, progress=False)
    except StoppedEarly:
        return  # no certification: the sweep driver marks the trial STOPPED
    if sync is not None and world > 1:
        torch.distributed.barrier()
        if rank != 0:  # the final model, as rank 0 uploaded it
            sync.fetch(CHECKPOINT)
    device = torch.device(config.device)
    final = certify_stage(task.stage, task.stages, config, trial_dir, rank, world, device,
                          sync)
    if task.attack_eval is not None and task.stage in (0, 2):
        final.update(attack_trial(config, task.attack_eval, trial_dir, rank, world, device,
                                  sync))
    ray.train.report(final)  # (never a "done" key: Tune would stop the trial on it)
