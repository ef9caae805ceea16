"""Trial configuration: the keys of ``smoothadv train`` and of a sweep grid, with validation.

A trial config is a flat mapping plus one nested ``certify`` block. Unknown keys and bad values
are refused with one line naming the key (a UserError), before anything runs: each key's type by
common.validation (pydantic, strict), ranges and keys that depend on each other by
:func:`validate`, which also checks a config built in code.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Self

from smoothadv.common.errors import UserError
from smoothadv.common.settings import Sampling, SamplingKeys, check_seed, check_sigma
from smoothadv.common.validation import check_at_least, parse_block
from smoothadv.common.yaml_input import load_yaml, read_yaml_file
from smoothadv.trainers.registry import DATASETS, check_arch, dataset_info, is_import_path

METHODS = ("gaussian", "smoothadv", "vanilla_adv")
ATTACKS = ("pgd", "ddn")


@dataclass(frozen=True, kw_only=True)
class CertifyConfig(SamplingKeys):
    """CERTIFY settings for a trial's final model (Cohen et al.'s defaults): the sampling
    (``sigma`` and ``seed`` are the trial's), noisy samples per forward pass and the images.

    ``sequential`` (on by default in a trial; :meth:`certify.smooth.Smooth.certify_sequential`)
    stops an image's sampling once its row is decided: wrong label, certain abstention, or,
    with ``target_radius`` (the largest radius the report reads; the presets set it), a
    certified radius already ≥ it. Certified accuracy at every radius up to ``target_radius``
    keeps Cohen et al.'s guarantee; radii beyond it (and so the ACR) are lower bounds."""

    n0: int = 100  # always CERTIFY, never PREDICT
    batch_size: int | None = None  # None: certify.smooth.DEFAULT_BATCH for the device
    skip: int = 1
    max: int = -1
    sequential: bool = True
    target_radius: float | None = None

    def sampling(self, sigma: float, seed: int) -> Sampling:
        """The trial's sampling settings: these keys with its noise level and seed."""
        return dataclasses.replace(self.with_noise(sigma, seed), sequential=self.sequential,
                                   target_radius=self.target_radius)

    def validate(self, prefix: str = "certify.") -> Self:
        super().validate(prefix)
        if self.target_radius is not None:
            _require(self.sequential, f"{prefix}target_radius", "only with sequential: true")
            _require(math.isfinite(self.target_radius) and self.target_radius > 0,
                     f"{prefix}target_radius", f"must be > 0, got {self.target_radius}")
        if self.batch_size is not None:
            check_at_least(self, prefix, 1, "batch_size")
        check_at_least(self, prefix, 1, "skip")
        return self


@dataclass(frozen=True)
class TrialConfig:
    """One training run. ``epsilon`` is ℓ2 in [0,1] pixel units (the paper's 0.25 … 2.0)."""

    dataset: str = "cifar10"
    data_root: str | None = None
    train_subset: int | None = None
    # the first N test images score each epoch's noisy test accuracy (null: all); what is
    # certified is certify.skip/certify.max's
    epoch_test_subset: int | None = None
    arch: str = "cifar_resnet110"
    sigma: float = 0.25
    method: str = "smoothadv"
    attack: str = "pgd"
    gradient_free: bool = False
    epsilon: float = 0.5
    steps: int = 10
    ddn_quantize: bool = True  # DDN rounds x+δ to 8-bit levels, as the reference (pgd: unused)
    # DDN's final rounding stays within ε (rounding toward zero the fewest coordinates it
    # must) instead of the reference's rounding of δ to nearest, which may leave the ε-ball by
    # up to √d/510: a departure from the reference, off by default
    ddn_within_epsilon: bool = False
    m_train: int = 1
    multi_noise: bool = True  # update on all m noisy copies (Pseudocode 1)
    warmup_epochs: int = 10
    epochs: int = 150
    batch_size: int = 256
    lr: float = 0.1
    lr_step: int = 50
    lr_gamma: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    init_from: str | None = None
    reinit_head: bool = False
    extra_data: str | None = None
    extra_weight: float = 1.0
    seed: int = 0
    device: str = "auto"
    # Training data loader processes: null (auto) is min(8, CPUs per GPU) on CUDA, 0 (loading in
    # the training process, as always) on the CPU; an integer is used as given. The test images
    # always load so; the training images only off the device (data_on_device).
    loader_workers: int | None = None
    # bfloat16 autocast of the forward passes of the attack and the update (backward passes
    # outside it), on CPU and CUDA (there on a channels-last model, as the CPU always is).
    # Off by default: float32 is the reference (Hadisalman/smoothing-adversarial trains in
    # float32); benchmarks/bf16_vs_fp32.py compares the two.
    amp: bool = False
    # torch.compile the trained model (the attack's and the update's passes; eager, with one
    # line, where no compiler works). On 2 CPU cores it pays for ResNet-20 (1.36-1.62× per
    # SmoothAdv step) but not for a LeNet (0.86×): benchmarks/train_step_speed.py --compile.
    # null (auto): compile when the model's forward pass takes ≥ 20 MFLOP a sample and the
    # whole training ≥ 1e13 FLOPs on CPU, 1e16 on CUDA (trainers.compiled); true/false: as set.
    compile: bool | None = None
    # Hold the uint8 training images on the training device and crop and flip them there a
    # batch at a time (trainers.device_data), in the loader's seeded order; for the in-memory
    # datasets (cifar10, cifar100, svhn, mnist, fashion_mnist, imagenet32, synthetic) without
    # extra_data. null (auto): on for the CPU (10× the loader's images/s, CIFAR-sized batches
    # on 2 threads: benchmarks/data_path_speed.py) and for CUDA when the set takes under a
    # quarter of the free GPU memory; true: required; false: the DataLoader path.
    data_on_device: bool | None = None
    certify: CertifyConfig = field(default_factory=CertifyConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise UserError(f"{key}: {message}")


def validate(config: TrialConfig) -> TrialConfig:
    c = config
    # A built-in name, or an import path 'module:name' resolved now (trainers.registry).
    _require(c.dataset in DATASETS or is_import_path(c.dataset), "dataset",
             f"unknown {c.dataset!r}; one of {sorted(DATASETS)} or 'module.path:factory'")
    dataset_info(c.dataset)
    check_arch(c.arch)
    _require(c.method in METHODS, "method", f"unknown {c.method!r}; one of {list(METHODS)}")
    _require(c.attack in ATTACKS, "attack", f"unknown {c.attack!r}; one of {list(ATTACKS)}")
    check_sigma(c.sigma)
    check_seed(c.seed)
    check_at_least(c, "", 0, "epsilon")
    check_at_least(c, "", 1, "m_train", "steps", "epochs", "batch_size")
    check_at_least(c, "", 0, "warmup_epochs")
    _require(c.lr > 0, "lr", f"must be > 0, got {c.lr}")
    check_at_least(c, "", 1, "lr_step")
    _require(0 < c.lr_gamma <= 1, "lr_gamma", f"must lie in (0, 1], got {c.lr_gamma}")
    _require(0 <= c.momentum < 1, "momentum", f"must lie in [0, 1), got {c.momentum}")
    check_at_least(c, "", 0, "weight_decay", "extra_weight")
    _require(c.loader_workers is None or c.loader_workers >= 0, "loader_workers",
             f"must be ≥ 0 or null (auto), got {c.loader_workers}")
    for key in ("train_subset", "epoch_test_subset"):
        value = getattr(c, key)
        _require(value is None or value >= 1, key, f"must be ≥ 1 or null, got {value}")
    _require(not c.gradient_free or c.attack == "pgd", "gradient_free",
             "the gradient-free estimator is for attack: pgd only")
    _require(not c.ddn_within_epsilon or (c.attack == "ddn" and c.ddn_quantize),
             "ddn_within_epsilon", "rounds DDN's output: needs attack: ddn and ddn_quantize")
    _require(not c.reinit_head or c.init_from is not None, "reinit_head",
             "needs init_from (the checkpoint whose head is replaced; a sweep may name "
             "its pre-training sweep instead, init_from_sweep)")
    _require(c.extra_data is None or c.dataset != "imagenet", "extra_data",
             "self-training reads in-memory image arrays; not supported for dataset imagenet")
    _require(c.extra_data is None or c.batch_size % 2 == 0, "batch_size",
             f"must be even with extra_data (half labelled, half pseudo-labelled), "
             f"got {c.batch_size}")
    _require(c.data_on_device is not True or c.extra_data is None, "data_on_device",
             "true needs no extra_data (self-training reads its batches through the loader); "
             "set it to null or false")
    _require(c.data_on_device is not True or c.dataset != "imagenet", "data_on_device",
             "true needs in-memory training images; imagenet is read from image files: "
             "set it to null or false")
    c.certify.validate()
    return config


def parse_trial_config(values: Mapping[str, Any]) -> TrialConfig:
    """A validated TrialConfig from a mapping (defaults fill absent keys)."""
    if not isinstance(values, Mapping):
        raise UserError("trial config: expected a mapping of keys to values")
    return validate(parse_block(TrialConfig, values))


def apply_overrides(values: Mapping[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply ``key=value`` strings (YAML values; ``certify.n=1000`` for the nested block)."""
    out = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in values.items()}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UserError(f"--set {item!r}: expected key=value")
        value = load_yaml(raw, f"--set {key}")
        head, _, tail = key.partition(".")
        if tail:
            out.setdefault(head, {})
            if not isinstance(out[head], dict):
                raise UserError(f"--set {key}: {head} is not a mapping")
            out[head][tail] = value
        else:
            out[key] = value
    return out


def load_trial_config(path: str, overrides: Iterable[str] = ()) -> TrialConfig:
    """Read a YAML trial config (within common.yaml_input's limits), apply ``--set``
    overrides, validate."""
    values = read_yaml_file(path) or {}
    if not isinstance(values, Mapping):
        raise UserError(f"{path}: expected a mapping of trial keys")
    try:
        return parse_trial_config(apply_overrides(values, overrides))
    except UserError as e:
        raise UserError(f"{path}: {e}") from None
