"""The released checkpoints of Cohen et al. (2019, repository ``locuslab/smoothing``) and of
SmoothAdv (Salman et al. 2019, repository ``Hadisalman/smoothing-adversarial``), read into the
project's architectures so that ``smoothadv certify``, ``predict`` and ``attack`` take them as
they are.

Their files hold ``arch``, ``state_dict``, ``epoch`` and ``optimizer``. The state dict is that of
the references' ``get_architecture``: ``Sequential(input layer, net)``, whose input layer keeps its
statistics as plain tensor attributes, so every key starts with ``1.`` (``1.module.`` where the net
is wrapped in ``DataParallel``, as both references do for ResNet-50) and the file does not say
which input layer the model was trained with. Both references define two, per training dataset:
``NormalizeLayer`` ((x − mean)/std) and ``InputCenterLayer`` (x − mean; no ``imagenet32`` variant).
SmoothAdv's README maps its released models to them: mean/std normalization for ``imagenet32/``
and the fine-tuned and self-trained CIFAR-10 models, mean-centering for the from-scratch CIFAR-10
and ImageNet models; all of Cohen et al.'s models use mean/std normalization.

Architectures: the references' CIFAR ResNet (Wei Yang's ``pytorch-classification`` ResNet with
basic blocks) is the project's :class:`trainers.models.CifarResNet` with other block names; the
reference names the i-th block of stage s ``layer{s}.{i}``, the project numbers all blocks in one
``layers`` Sequential, ``layers.{(s − 1)·n + i}`` for n blocks per stage. ``conv1``, ``bn1``,
``fc`` and the blocks' ``conv1, bn1, conv2, bn2, downsample.0, downsample.1`` agree. ResNet-50 is
torchvision's in both.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from smoothadv.common.errors import UserError
from smoothadv.trainers.models import NormalizeLayer, build_model
from smoothadv.trainers.registry import dataset_info
from torch import nn

INPUT_LAYERS = ("normalize", "center")
INPUT_LAYER_HELP = ("normalize ((x − mean)/std: Cohen et al.'s models; SmoothAdv's imagenet32/, "
                    "fine-tuned and self-trained CIFAR-10 models) or center (x − mean: "
                    "SmoothAdv's from-scratch CIFAR-10 and ImageNet models)")


@dataclass(frozen=True)
class _Arch:
    """A reference architecture: the project's equivalent and the dataset it was trained on."""

    project_arch: str
    dataset: str
    blocks_per_stage: int | None  # CIFAR ResNets: n of depth 6n + 2; None: names unchanged


REFERENCE_ARCHS = {
    "cifar_resnet20": _Arch("cifar_resnet20", "cifar10", 3),
    "cifar_resnet110": _Arch("cifar_resnet110", "cifar10", 18),
    "imagenet32_resnet110": _Arch("cifar_resnet110", "imagenet32", 18),
    "resnet50": _Arch("resnet50", "imagenet", None),
}
# The statistics the references' input layers use per training dataset: ImageNet-32 reuses
# CIFAR-10's (SmoothAdv's get_normalize_layer), and has no mean-centering layer.
_STATISTICS = {"cifar10": "cifar10", "imagenet": "imagenet", "imagenet32": "cifar10"}
_CENTERING = ("cifar10", "imagenet")

_REFERENCE_BLOCK = re.compile(r"layer([123])\.(\d+)\.(.+)")
_PROJECT_BLOCK = re.compile(r"layers\.(\d+)\.(.+)")


@dataclass
class Released:
    """A released model rebuilt as ``Sequential(NormalizeLayer, net)`` (on the CPU, in train
    mode as :func:`trainers.checkpoint.model_from_checkpoint` returns models)."""

    model: nn.Sequential
    dataset: str
    num_classes: int
    input_layer: str


def _project_key(key: str, blocks: int | None) -> str | None:
    """The project's name for the reference net's parameter ``key`` (None: no such block)."""
    m = _REFERENCE_BLOCK.fullmatch(key) if blocks else None
    if m is None:
        return key
    stage, index = int(m[1]), int(m[2])
    return f"layers.{(stage - 1) * blocks + index}.{m[3]}" if index < blocks else None


def _reference_key(key: str, blocks: int | None) -> str:
    """The reference's name for the project's parameter ``key`` (for error messages)."""
    m = _PROJECT_BLOCK.fullmatch(key) if blocks else None
    if m is None:
        return key
    k = int(m[1])
    return f"layer{k // blocks + 1}.{k % blocks}.{m[2]}"


def _net_state(path: Path, state: dict[str, Any], arch: str, net: nn.Module
               ) -> dict[str, torch.Tensor]:
    """``state`` (the file's ``Sequential(input layer, net)`` keys) renamed to ``net``'s keys,
    checked key by key and shape by shape; BatchNorm's ``num_batches_tracked``, which files from
    before PyTorch 0.4.1 lack and evaluation never reads, is filled in when missing."""
    blocks = REFERENCE_ARCHS[arch].blocks_per_stage
    expected = net.state_dict()

    def misfit(what: str) -> UserError:
        return UserError(f"{path}: state_dict does not fit the reference {arch!r} ({what}; "
                         "expected keys 1.<name> or 1.module.<name> of the reference net)")

    mapped: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        name = key.removeprefix("1.") if isinstance(key, str) else None
        if name is None or name == key or not isinstance(value, torch.Tensor):
            raise misfit(f"unexpected entry {key!r}")
        target = _project_key(name.removeprefix("module."), blocks)
        if target not in expected or target in mapped:
            raise misfit(f"unexpected key {key!r}")
        if value.shape != expected[target].shape:
            raise misfit(f"{key} has shape {tuple(value.shape)}, expected "
                         f"{tuple(expected[target].shape)}")
        mapped[target] = value
    for target, value in expected.items():
        if target not in mapped:
            if not target.endswith("num_batches_tracked"):
                raise misfit(f"missing 1.{_reference_key(target, blocks)}")
            mapped[target] = value
    return mapped


def released_model(path: str | Path, payload: Any, input_layer: str | None) -> Released:
    """Rebuild the model of a released checkpoint (``payload``, the file read with
    ``weights_only=True``) with ``input_layer`` (one of :data:`INPUT_LAYERS`) in front.

    Every problem is one UserError line naming the file: a payload without ``arch`` and
    ``state_dict``, an unknown arch, keys or shapes that do not fit it, no input layer given.
    """
    path = Path(path)
    if not (isinstance(payload, dict) and isinstance(payload.get("state_dict"), dict)
            and "arch" in payload):
        raise UserError(f"{path}: neither a smoothadv checkpoint (format_version, arch, dataset, "
                        "num_classes, mean, std, state_dict) nor a released Cohen et al./SmoothAdv"
                        " one (arch, state_dict)")
    arch = payload["arch"]
    if not isinstance(arch, str) or arch not in REFERENCE_ARCHS:
        raise UserError(f"{path}: unknown arch {arch!r} in a released-layout checkpoint; "
                        f"expected one of {', '.join(REFERENCE_ARCHS)}")
    spec = REFERENCE_ARCHS[arch]
    model = build_model(spec.project_arch, spec.dataset)
    model[1].load_state_dict(_net_state(path, payload["state_dict"], arch, model[1]))
    if input_layer is None:
        raise UserError(f"{path}: a released Cohen et al./SmoothAdv checkpoint does not store its "
                        f"input layer; give --input-layer {INPUT_LAYER_HELP}")
    if input_layer not in INPUT_LAYERS:
        raise UserError(f"input_layer: expected one of {', '.join(INPUT_LAYERS)}, "
                        f"got {input_layer!r}")
    if input_layer == "center" and spec.dataset not in _CENTERING:
        raise UserError(f"{path}: the references define no mean-centering layer for "
                        f"{spec.dataset} ({arch}); its released models use --input-layer normalize")
    stats = dataset_info(_STATISTICS[spec.dataset])
    std = stats.std if input_layer == "normalize" else (1.0,) * len(stats.mean)
    model[0] = NormalizeLayer(stats.mean, std)
    return Released(model, spec.dataset, dataset_info(spec.dataset).num_classes, input_layer)
