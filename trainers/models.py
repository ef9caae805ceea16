"""Base classifiers. Every model takes [0,1] pixels and normalizes in its first layer.

``build_model(arch, dataset)`` returns ``nn.Sequential(NormalizeLayer, net)``; the number of
classes and input channels come from the dataset (docs/reference-facts.md: storing the
architecture and its normalization together avoids models that predict garbage under the other
normalization). Each builder in ``ARCHS`` takes the dataset's ``DatasetInfo``; ``arch`` may also
be an import path ``module:builder`` to a user's callable of that signature (trainers.registry).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from smoothadv.common.errors import UserError
from smoothadv.trainers.registry import (
    DatasetInfo,
    dataset_info,
    is_import_path,
    resolve_import_path,
)
from torch import nn


class NormalizeLayer(nn.Module):
    """(x − mean) / std per channel; mean and std are buffers, so they travel in state dicts."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class BasicBlock(nn.Module):
    """Two 3×3 conv-BN layers with an identity (or 1×1 conv-BN) shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


class CifarResNet(nn.Module):
    """Cohen et al.'s CIFAR ResNet: depth 6n+2, three stages of n basic blocks, widths 16/32/64."""

    def __init__(self, depth: int, num_classes: int, in_channels: int = 3):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        layers, in_planes = [], 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(n):
                layers.append(BasicBlock(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


class LeNet(nn.Module):
    """A small CNN for 28×28 grayscale images: two 5×5 conv + max-pool stages, two dense layers."""

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int):
        super().__init__()
        c, h, w = input_shape
        self.features = nn.Sequential(
            nn.Conv2d(c, 16, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(32 * (h // 4) * (w // 4), 128), nn.ReLU(inplace=True)
        )
        self.fc = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.classifier(self.features(x)))


def _resnet50(info: DatasetInfo) -> nn.Module:
    from torchvision.models import resnet50

    net = resnet50(weights=None, num_classes=info.num_classes)
    if info.input_shape[0] != 3:
        net.conv1 = nn.Conv2d(info.input_shape[0], 64, 7, 2, 3, bias=False)
    return net


ARCHS = {
    "cifar_resnet20": lambda info: CifarResNet(20, info.num_classes, info.input_shape[0]),
    "cifar_resnet110": lambda info: CifarResNet(110, info.num_classes, info.input_shape[0]),
    "resnet50": _resnet50,
    "lenet": lambda info: LeNet(info.input_shape, info.num_classes),
}


def build_model(arch: str, dataset: str | DatasetInfo) -> nn.Sequential:
    """``nn.Sequential(NormalizeLayer(mean, std), net)`` for ``arch`` sized to ``dataset``."""
    info = dataset if isinstance(dataset, DatasetInfo) else dataset_info(dataset)
    if is_import_path(arch):  # a user's builder, same signature as ARCHS' (trainers.registry)
        net = resolve_import_path("arch", arch)(info)
        if not isinstance(net, nn.Module):
            raise UserError(f"arch: {arch!r} returned a {type(net).__name__}, not an nn.Module")
    elif arch in ARCHS:
        net = ARCHS[arch](info)
    else:
        raise UserError(f"arch: unknown architecture {arch!r}; expected one of {sorted(ARCHS)} "
                        "or an import path 'module.path:builder'")
    return nn.Sequential(NormalizeLayer(info.mean, info.std), net)


def place(model: nn.Module, device: str | torch.device) -> nn.Module:
    """Move ``model`` to ``device``; on CPU in the channels-last layout, where oneDNN's
    convolutions and pooling run about twice as fast (LeNet: 2.1× per forward pass)."""
    device = torch.device(device)
    model = model.to(device)
    return model.to(memory_format=torch.channels_last) if device.type == "cpu" else model


def reset_head(model: nn.Sequential, num_classes: int) -> None:
    """Replace the final linear layer (``fc`` in every architecture here) with a fresh one."""
    net = model[1]
    net.fc = nn.Linear(net.fc.in_features, num_classes).to(net.fc.weight.device)
