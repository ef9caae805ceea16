"""Training under DDP (2 gloo ranks, no Ray): the ranks stay in sync through SmoothAdv's attack
passes, and rank 0 alone writes the checkpoint and metrics."""

from __future__ import annotations

import json

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from ports import free_port
from smoothadv.trainers import model_from_checkpoint, step, train
from smoothadv.trainers.config import parse_trial_config

CONFIG = {"dataset": "synthetic", "arch": "lenet", "train_subset": 96, "epoch_test_subset": 32,
          "epochs": 2, "batch_size": 32, "lr": 0.05, "method": "smoothadv", "attack": "pgd",
          "steps": 2, "m_train": 2, "multi_noise": True, "epsilon": 0.25, "warmup_epochs": 1,
          "device": "cpu"}


def _rank_main(rank: int, world: int, port: int, out: str, params_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    torch.set_num_threads(1)
    reports, seen = [], {}
    real_train_batch = train.train_batch

    def spy(model, *args, **kwargs):  # the model each rank actually trains
        seen["model"] = model
        return real_train_batch(model, *args, **kwargs)

    train.train_batch = spy
    train.train_trial(parse_trial_config(CONFIG), out, progress=False,
                      report=lambda metrics, path: reports.append(metrics))
    model = seen["model"]
    torch.save({"reports": len(reports), "world": reports[-1]["world_size"],
                "ddp": isinstance(model, torch.nn.parallel.DistributedDataParallel),
                "params": [p.detach() for p in step.unwrap(model).parameters()]},
               f"{params_file}.{rank}")
    dist.destroy_process_group()



def test_two_ranks_train_one_model(tmp_path):
    out, params = tmp_path / "trial", tmp_path / "params"
    mp.spawn(_rank_main, args=(2, free_port(), str(out), str(params)), nprocs=2)
    results = [torch.load(f"{params}.{r}", weights_only=True) for r in range(2)]
    assert [r["reports"] for r in results] == [2, 2]  # every rank reports every epoch
    assert results[0]["world"] == 2
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [0, 1]  # written once, by rank 0
    assert all(m["world_size"] == 2 and m["test_acc_noisy"] is not None for m in lines)
    assert results[0]["ddp"] and results[1]["ddp"]
    # different data and noise on each rank, yet one model: DDP averaged every update
    for a, b in zip(results[0]["params"], results[1]["params"], strict=True):
        assert torch.allclose(a, b, atol=1e-6)
    saved = model_from_checkpoint(out / "checkpoint.pt", device="cpu")[0].parameters()
    for a, b in zip(saved, results[0]["params"], strict=True):
        assert torch.equal(a.detach(), b)
