"""Architectures built by ``trainers.build_model``: shapes, normalization, depth, heads."""

from __future__ import annotations

import pytest
import torch
from smoothadv.common.errors import UserError
from smoothadv.trainers import ARCHS, build_model, dataset_info
from smoothadv.trainers.models import BasicBlock, CifarResNet, NormalizeLayer, reset_head
from torch import nn

# (arch, dataset, batch): every arch on a dataset it is meant for, kept small for the CPU.
CASES = [
    ("cifar_resnet20", "cifar10", 3),
    ("cifar_resnet20", "synthetic", 2),
    ("cifar_resnet110", "cifar10", 2),
    ("lenet", "fashion_mnist", 3),
    ("lenet", "mnist", 2),
    ("cifar_resnet20", "cifar100", 2),
    ("cifar_resnet20", "svhn", 2),
    ("lenet", "synthetic", 2),
    ("resnet50", "imagenet", 1),
]


def test_cases_cover_every_arch():
    assert {arch for arch, _, _ in CASES} == set(ARCHS)


@pytest.mark.parametrize("arch,dataset,batch", CASES)
def test_output_shape_and_normalize_layer(arch, dataset, batch):
    info = dataset_info(dataset)
    torch.manual_seed(0)
    model = build_model(arch, dataset).eval()
    assert isinstance(model, nn.Sequential) and len(model) == 2
    norm = model[0]
    assert isinstance(norm, NormalizeLayer)
    assert norm.mean.flatten().tolist() == pytest.approx(list(info.mean))
    assert norm.std.flatten().tolist() == pytest.approx(list(info.std))
    assert tuple(norm.mean.shape) == (1, info.input_shape[0], 1, 1)

    x = torch.rand(batch, *info.input_shape)
    with torch.no_grad():
        out = model(x)
        mean = torch.tensor(info.mean).view(1, -1, 1, 1)
        std = torch.tensor(info.std).view(1, -1, 1, 1)
        direct = model[1]((x - mean) / std)
    assert out.shape == (batch, info.num_classes)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, direct, rtol=1e-5, atol=1e-5)
    # The normalization matters: feeding raw pixels to the net gives something else.
    with torch.no_grad():
        assert not torch.allclose(out, model[1](x), atol=1e-4)


def test_normalize_buffers_in_state_dict():
    sd = build_model("lenet", "synthetic").state_dict()
    assert "0.mean" in sd and "0.std" in sd
    assert sd["0.mean"].flatten().tolist() == [0.5]
    assert sd["0.std"].flatten().tolist() == [0.25]


def _blocks(model: nn.Module) -> list[BasicBlock]:
    return [m for m in model.modules() if isinstance(m, BasicBlock)]


@pytest.mark.parametrize("arch,n", [("cifar_resnet20", 3), ("cifar_resnet110", 18)])
def test_cifar_resnet_depth_and_widths(arch, n):
    model = build_model(arch, "cifar10")
    net = model[1]
    assert isinstance(net, CifarResNet)
    blocks = _blocks(model)
    assert len(blocks) == 3 * n
    widths = [b.conv2.out_channels for b in blocks]
    assert widths == [16] * n + [32] * n + [64] * n
    assert net.conv1.out_channels == 16
    assert net.fc.in_features == 64 and net.fc.out_features == 10
    # Conv layers: first conv + 2 per block + one 1×1 shortcut at each width change.
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 1 + 2 * 3 * n + 2
    # Stride 2 only where the width changes.
    strides = [b.conv1.stride[0] for b in blocks]
    assert strides == [1] * n + [2] + [1] * (n - 1) + [2] + [1] * (n - 1)


def test_block_counts_are_54_and_9():
    assert len(_blocks(build_model("cifar_resnet110", "cifar10"))) == 54
    assert len(_blocks(build_model("cifar_resnet20", "cifar10"))) == 9


def test_cifar_resnet110_on_imagenet32_has_1000_outputs():
    model = build_model("cifar_resnet110", "imagenet32").eval()
    assert model[1].fc.out_features == 1000
    with torch.no_grad():
        assert model(torch.rand(1, 3, 32, 32)).shape == (1, 1000)
    # CIFAR-10's statistics, as the SmoothAdv reference normalizes ImageNet-32 for fine-tuning
    assert model[0].mean.flatten().tolist() == pytest.approx([0.4914, 0.4822, 0.4465])
    assert model[0].std.flatten().tolist() == pytest.approx([0.2023, 0.1994, 0.2010])


def test_input_channels_follow_dataset():
    model = build_model("cifar_resnet20", "fashion_mnist").eval()
    assert model[1].conv1.in_channels == 1
    assert model[1].fc.out_features == 10
    with torch.no_grad():
        assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    assert build_model("cifar_resnet20", "cifar10")[1].conv1.in_channels == 3
    assert build_model("lenet", "fashion_mnist")[1].features[0].in_channels == 1
    assert build_model("lenet", "cifar10")[1].features[0].in_channels == 3
    assert build_model("resnet50", "fashion_mnist")[1].conv1.in_channels == 1


def test_resnet50_imagenet_head():
    model = build_model("resnet50", "imagenet")
    assert model[1].fc.out_features == 1000
    assert model[1].conv1.in_channels == 3


def test_unknown_arch_names_field():
    with pytest.raises(UserError) as err:
        build_model("vgg16", "cifar10")
    assert "arch" in str(err.value)
    assert "vgg16" in str(err.value)


def test_unknown_dataset_in_build_model():
    with pytest.raises(UserError, match="dataset"):
        build_model("lenet", "stl10")


@pytest.mark.parametrize("arch,dataset", [("lenet", "synthetic"), ("cifar_resnet20", "cifar10")])
def test_reset_head(arch, dataset):
    model = build_model(arch, dataset).eval()
    old_fc = model[1].fc
    other = {k: v.clone() for k, v in model.state_dict().items() if ".fc." not in f".{k}"}
    reset_head(model, 7)
    fc = model[1].fc
    assert fc is not old_fc
    assert isinstance(fc, nn.Linear)
    assert fc.out_features == 7 and fc.in_features == old_fc.in_features
    info = dataset_info(dataset)
    with torch.no_grad():
        assert model(torch.rand(2, *info.input_shape)).shape == (2, 7)
    after = model.state_dict()
    for k, v in other.items():
        assert torch.equal(after[k], v), k


def test_the_torch_free_registry_names_every_architecture_built():
    from smoothadv.trainers.registry import ARCH_NAMES

    assert sorted(ARCH_NAMES) == sorted(ARCHS)
