"""SmoothAdv training-step speed against its bound: the forward+backward passes it must do.

One loader batch of B images through ``trainers.train.train_batch`` (method smoothadv, attack
pgd) costs, in the batching of SmoothAdv's reference script (Pseudocode 1 as
Hadisalman/smoothing-adversarial's train_pgd.py runs it; docs/reference-facts.md):

* attack: for each of the m chunks of B/m images × m noisy copies, T forward+backward passes in
  eval mode with parameter gradients off and the input gradient on (T·B·m samples in all);
* update: one SGD step on B single-noise samples, or (``--multi-noise``) m SGD steps on the
  chunks' B/m × m noisy samples each, in train mode.

The bound times exactly those passes, at the same batch sizes and on the same model, on inputs
drawn before the clock starts; the ratio step / bound shows what noise sampling, the smoothed
loss, normalization, projection and mode switching cost on top. Target: ≤ 1.15.

It also prints the step's achieved FLOP/s (the FLOPs of one ``train_batch``, attack and update,
counted by ``torch.utils.flop_counter``: benchmarks/flops.py) over the dense-matmul FLOP/s
measured in the same run on the same device and dtype: the step's fraction of peak.

With ``--compile`` the step and its bound run through ``torch.compile`` (a trial's ``compile:
true``, trainers.compiled.CompiledOrEager), and the eager step is timed too: the line
"compiled speed-up" is eager step / compiled step (2 CPU cores: ResNet-20 at the defaults
1.62×, at ``--m 1`` 1.36×; ``--arch lenet --dataset fashion_mnist --batch 128 --m 1`` 0.86×).

    python benchmarks/train_step_speed.py [--device cuda] [--arch cifar_resnet20] [--batch 64]
        [--m 4] [--steps 2] [--multi-noise] [--repeats 7] [--threads 1] [--compile]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from flops import Peaks, count_flops  # a sibling: run this file as a script
from smoothadv.common.errors import UserError
from smoothadv.trainers import build_model, dataset_info
from smoothadv.trainers.attacks import frozen
from smoothadv.trainers.compiled import CompiledOrEager
from smoothadv.trainers.config import TrialConfig, validate
from smoothadv.trainers.train import train_batch
from torch.nn import functional as F

TARGET = 1.15


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def chunk_sizes(batch: int, m: int) -> list[int]:
    """Sizes of ``train_batch``'s chunks: ``tensor_split`` of the batch into m parts."""
    return [len(c) for c in torch.arange(batch).tensor_split(m) if len(c)]


def _update(model, optimizer, inputs: torch.Tensor, targets: torch.Tensor) -> None:
    loss = F.cross_entropy(model(inputs), targets)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def time_bound(model, optimizer, config: TrialConfig, shape: tuple[int, ...], num_classes: int,
               device: torch.device) -> float:
    """Only the step's forward+backward passes (and SGD steps), inputs prepared in advance."""
    m, gen = config.m_train, torch.Generator(device=device).manual_seed(1)
    sizes = chunk_sizes(config.batch_size, m)
    attack_in = [torch.rand((b * m, *shape), device=device, generator=gen).requires_grad_(True)
                 for b in sizes]
    attack_y = [torch.randint(num_classes, (b * m,), device=device, generator=gen)
                for b in sizes]
    if config.multi_noise:
        update_in = [x.detach() for x in attack_in]
        update_y = attack_y
    else:
        update_in = [torch.rand((config.batch_size, *shape), device=device, generator=gen)]
        update_y = [torch.randint(num_classes, (config.batch_size,), device=device,
                                  generator=gen)]
    sync(device)
    t0 = time.perf_counter()
    with frozen(model):
        for x, y in zip(attack_in, attack_y, strict=True):
            for _ in range(config.steps):
                loss = F.cross_entropy(model(x), y, reduction="sum")
                torch.autograd.grad(loss, x)
    model.train()
    for x, y in zip(update_in, update_y, strict=True):
        _update(model, optimizer, x, y)
    sync(device)
    return time.perf_counter() - t0


def time_step(model, optimizer, config: TrialConfig, x: torch.Tensor, y: torch.Tensor) -> float:
    stats = {"loss": 0.0, "correct": 0, "samples": 0}
    sync(x.device)
    t0 = time.perf_counter()
    train_batch(model, optimizer, x, y, config, config.epsilon, stats)
    sync(x.device)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="cifar_resnet20")
    parser.add_argument("--dataset", default="cifar10", help="only its shape and classes are used")
    parser.add_argument("--batch", type=int, default=None, help="default 64 on CPU, 256 on GPU")
    parser.add_argument("--m", type=int, default=4, help="noise samples per image (m_train)")
    parser.add_argument("--steps", type=int, default=2, help="PGD steps T")
    parser.add_argument("--multi-noise", action="store_true",
                        help="update on all m noisy copies (m SGD steps per batch)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=7, help="report the median of this many")
    parser.add_argument("--compile", action="store_true",
                        help="train through torch.compile; also time the eager step")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's); 1 gives steady timings on a "
                             "busy machine, where waiting threads dominate")
    args = parser.parse_args()
    if args.threads is not None:
        if args.threads < 1:
            parser.error(f"--threads: must be ≥ 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    batch = args.batch or (256 if device.type == "cuda" else 64)
    try:
        config = validate(TrialConfig(
            dataset=args.dataset, arch=args.arch, method="smoothadv", attack="pgd", sigma=0.25,
            epsilon=0.5, steps=args.steps, m_train=args.m, multi_noise=args.multi_noise,
            batch_size=batch, device=args.device))
    except UserError as e:
        parser.error(str(e))
    info = dataset_info(config.dataset)
    torch.manual_seed(0)
    net = build_model(config.arch, info).to(device)
    model = CompiledOrEager(net) if args.compile else net
    optimizer = torch.optim.SGD(net.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    x = torch.rand((batch, *info.input_shape), device=device)
    y = torch.randint(info.num_classes, (batch,), device=device)

    def bound() -> float:
        return time_bound(model, optimizer, config, info.input_shape, info.num_classes, device)

    def step() -> float:
        return time_step(model, optimizer, config, x, y)

    bound(), step()  # warm-up (allocator, kernels, optimizer state)
    bounds, steps = [], []
    for i in range(args.repeats):  # interleave, alternating who goes first, to cancel drift
        first, second = (bound, step) if i % 2 == 0 else (step, bound)
        a, b = first(), second()
        bounds.append(a if first is bound else b)
        steps.append(b if first is bound else a)
    t_bound, t_step = statistics.median(bounds), statistics.median(steps)
    update = (f"{len(chunk_sizes(batch, args.m))} SGD steps on ~{batch // args.m}×{args.m} "
              "noisy samples each" if args.multi_noise else f"1 SGD step on {batch} samples")
    print(f"device {device} ({torch.get_num_threads()} CPU threads), {config.arch} on "
          f"{config.dataset}-shaped random data, batch {batch}, "
          f"m={args.m}, T={args.steps}; attack {args.steps}×{batch * args.m} samples, {update}; "
          f"median of {args.repeats}")
    print(f"forward+backward passes only (bound): {t_bound:.3f} s   "
          f"train_batch: {t_step:.3f} s")
    print(f"ratio step / bound: {t_step / t_bound:.3f}   (target ≤ {TARGET:.2f})")
    # the same math eager or compiled: counted on the eager model, after the timings
    flops = count_flops(train_batch, net, optimizer, x, y, config, config.epsilon,
                        {"loss": 0.0, "correct": 0, "samples": 0})
    peaks = Peaks()
    print(f"train_batch: {peaks.line(flops, t_step, device, torch.float32)}")
    if args.compile:
        if not model.compiled:
            print("torch.compile fell back to eager here: no compiled timing")
            return
        time_step(net, optimizer, config, x, y)  # warm-up
        eager = statistics.median(time_step(net, optimizer, config, x, y)
                                  for _ in range(args.repeats))
        print(f"eager train_batch: {eager:.3f} s   compiled speed-up: {eager / t_step:.2f}×")
        print(f"eager train_batch: {peaks.line(flops, eager, device, torch.float32)}")


if __name__ == "__main__":
    main()
