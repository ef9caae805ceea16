"""Released Cohen et al. / SmoothAdv checkpoints are read as they are
(trainers/released_checkpoints.py).

The files are built here from the project's own architectures, written as the references write
them: ``arch``, ``state_dict`` with the keys of ``Sequential(input layer, net)`` (``1.<name>``,
``1.module.<name>`` under DataParallel, the references' CIFAR ResNet block names, no input-layer
entries), ``epoch`` and ``optimizer``. The same weights are also saved as a project checkpoint
whose NormalizeLayer is the matching input layer; both must give identical logits (bit for bit,
so the renaming is exact) and identical certify/predict/attack rows through the CLI.

The CLI runs use ResNet-110 on CIFAR-10; ImageNet-32 ResNet-110 and ResNet-50 (DataParallel
keys) are compared logit for logit. BatchNorm statistics are randomized, so blocks swapped by a
wrong mapping change the logits.
"""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest
import torch
from formats import write_cifar10, write_imagefolder, write_imagenet32
from smoothadv.certify import clopper_pearson_lower
from smoothadv.certify.runner import load_evaluation
from smoothadv.cli.main import main
from smoothadv.common.layout import meta_path
from smoothadv.trainers import build_model, save_checkpoint
from smoothadv.trainers.models import NormalizeLayer
from torch import nn

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# reference arch → (project arch, the dataset it was trained on, its input-layer statistics)
REFERENCE = {
    "cifar_resnet20": ("cifar_resnet20", "cifar10", CIFAR_MEAN, CIFAR_STD),
    "cifar_resnet110": ("cifar_resnet110", "cifar10", CIFAR_MEAN, CIFAR_STD),
    "imagenet32_resnet110": ("cifar_resnet110", "imagenet32", CIFAR_MEAN, CIFAR_STD),
    "resnet50": ("resnet50", "imagenet", IMAGENET_MEAN, IMAGENET_STD),
}


def random_net(arch: str, seed: int = 0) -> nn.Module:
    """The net (no input layer) of reference ``arch``, with random BatchNorm statistics and
    affine parameters so that every block changes the output."""
    project_arch, dataset, _, _ = REFERENCE[arch]
    torch.manual_seed(seed)
    net = build_model(project_arch, dataset)[1]
    g = torch.Generator().manual_seed(seed)
    for bn in (m for m in net.modules() if isinstance(m, nn.BatchNorm2d)):
        c = bn.num_features
        bn.running_mean.copy_(0.1 * torch.randn(c, generator=g))
        bn.running_var.copy_(0.5 + torch.rand(c, generator=g))
        bn.weight.data.copy_(0.5 * torch.rand(c, generator=g))
        bn.bias.data.copy_(0.1 * torch.randn(c, generator=g))
    return net.eval()


def reference_key(key: str, arch: str) -> str:
    """The reference's name of the project parameter ``key``: the k-th block of the project's
    flat ``layers`` is block k mod n of stage k div n + 1 (``layer{stage}.{i}``)."""
    if arch == "resnet50":
        return key
    n = {"cifar_resnet20": 3}.get(arch, 18)
    return re.sub(r"^layers\.(\d+)\.",
                  lambda m: f"layer{int(m[1]) // n + 1}.{int(m[1]) % n}.", key)


def write_released(path, net: nn.Module, arch: str, *, data_parallel: bool = False,
                   legacy: bool = False) -> dict[str, torch.Tensor]:
    """Write ``net`` as a released checkpoint; returns its state dict. The optimizer state holds
    momentum buffers (of the last layer only, to keep the files small)."""
    optimizer = torch.optim.SGD(net.fc.parameters(), lr=0.1, momentum=0.9)
    for p in net.fc.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()  # zero gradients move nothing
    net.zero_grad(set_to_none=True)
    prefix = "1.module." if data_parallel else "1."
    state = {prefix + reference_key(k, arch): v.clone() for k, v in net.state_dict().items()}
    torch.save({"epoch": 90, "arch": arch, "state_dict": state,
                "optimizer": optimizer.state_dict()}, path,
               _use_new_zipfile_serialization=not legacy)
    return state


def write_project(path, net: nn.Module, arch: str, input_layer: str) -> None:
    """The same weights as a smoothadv checkpoint with the matching input layer."""
    project_arch, dataset, mean, std = REFERENCE[arch]
    std = std if input_layer == "normalize" else (1.0, 1.0, 1.0)
    save_checkpoint(path, nn.Sequential(NormalizeLayer(mean, std), net), arch=project_arch,
                    dataset=dataset)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_cifar10(root, per_batch=3, seed=1)
    write_imagenet32(root / "imagenet32", per_batch=2, seed=2)
    write_imagefolder(root / "imagenet", ["a", "b"], 1, size=(40, 48), seed=3)
    return root


def assert_reference_names(state: dict[str, torch.Tensor], net: nn.Module) -> None:
    """The written ResNet-110 keys are those of the references' CIFAR ResNet."""
    assert len(state) == len(net.state_dict())
    assert state["1.layer1.17.conv2.weight"].shape == (16, 16, 3, 3)
    assert state["1.layer2.0.downsample.0.weight"].shape == (32, 16, 1, 1)
    assert state["1.layer3.0.downsample.1.running_var"].shape == (64,)
    assert "1.layer3.17.bn2.num_batches_tracked" in state
    assert state["1.fc.weight"].shape == (10, 64) and "1.layer1.18.conv1.weight" not in state
    assert not [k for k in state if k.startswith("0.") or "layers." in k]


def spread_logits(model: nn.Sequential, images: torch.Tensor) -> None:
    """A random CIFAR ResNet's pooled features hardly depend on its input, so it predicts one
    class everywhere; set ``fc`` to a random map of the standardized features instead, so that
    predictions differ between images and between noise draws."""
    features = []
    hook = model[1].pool.register_forward_hook(lambda m, i, o: features.append(o.flatten(1)))
    with torch.no_grad():
        model(images)
    hook.remove()
    f = features[0]
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(model[1].fc.out_features, f.shape[1], generator=g)
    weight /= f.std(0).clamp_min(1e-6) * 8
    model[1].fc.weight.data.copy_(weight)
    model[1].fc.bias.data.copy_(-weight @ f.mean(0))


def cli(command: str, ckpt, out, data_root, *extra: str) -> list[str]:
    args = [command, str(ckpt), "--sigma", "0.25", "--n", "24", "--alpha", "0.2", "--batch",
            "32", "--max", "2", "--data-root", str(data_root), "--device", "cpu", "--out",
            str(out), "--no-progress"]
    if command == "certify":
        args += ["--n0", "8"]
    if command == "attack":
        args += ["--epsilon", "0.5", "--steps", "1", "--m-test", "2"]
    return [*args, *extra]


def rows(path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t").drop(columns="time")


@pytest.fixture(scope="module")
def resnet110_files(tmp_path_factory, data):
    """A released-layout ResNet-110 (mean/std input layer, as Cohen et al.'s) and the same
    weights as a project checkpoint, with logits spread over the classes."""
    folder = tmp_path_factory.mktemp("r110cli")
    net = random_net("cifar_resnet110", seed=1)
    model = nn.Sequential(NormalizeLayer(CIFAR_MEAN, CIFAR_STD), net).eval()
    spread_logits(model, torch.rand((8, 3, 32, 32), generator=torch.Generator().manual_seed(5)))
    write_released(folder / "released.pth.tar", net, "cifar_resnet110")
    write_project(folder / "project.pt", net, "cifar_resnet110", "normalize")
    return folder / "released.pth.tar", folder / "project.pt"


def test_certify_of_a_released_checkpoint_equals_the_project_checkpoint(resnet110_files, data,
                                                                         tmp_path):
    released, project = resnet110_files
    out_r, out_p = tmp_path / "released.tsv", tmp_path / "project.tsv"
    assert main(cli("certify", released, out_r, data, "--input-layer", "normalize")) == 0
    assert main(cli("certify", project, out_p, data)) == 0
    pd.testing.assert_frame_equal(rows(out_r), rows(out_p))
    certified = rows(out_r)
    # the noise draws disagree (nA < n) and differently per image: the counts are compared too
    assert len(certified) == 2 and certified["pA_lower"].nunique() == 2
    assert (certified["pA_lower"] < clopper_pearson_lower(24, 24, 0.2)).all()
    meta = json.loads(meta_path(out_r).read_text())
    assert meta["dataset"] == "cifar10" and meta["input_layer"] == "normalize"
    assert "input_layer" not in json.loads(meta_path(out_p).read_text())


def test_predict_and_attack_of_a_released_checkpoint_equal_the_project_checkpoint(
        resnet110_files, data, tmp_path):
    released, project = resnet110_files
    for command in ("predict", "attack"):
        out_r, out_p = tmp_path / f"{command}_r.tsv", tmp_path / f"{command}_p.tsv"
        assert main(cli(command, released, out_r, data, "--input-layer", "normalize")) == 0
        assert main(cli(command, project, out_p, data)) == 0
        pd.testing.assert_frame_equal(rows(out_r), rows(out_p))
        assert len(rows(out_r)) == 2


@pytest.mark.parametrize("arch,input_layer,data_parallel,legacy,dataset", [
    ("cifar_resnet110", "normalize", False, True, None),
    ("cifar_resnet110", "center", False, False, None),
    ("imagenet32_resnet110", "normalize", False, False, None),
    ("resnet50", "center", True, False, "imagenet32"),
    ("resnet50", "normalize", True, True, "imagenet32"),
])
def test_released_weights_give_the_project_models_logits_bit_for_bit(
        tmp_path, data, arch, input_layer, data_parallel, legacy, dataset):
    net = random_net(arch)
    state = write_released(tmp_path / "released.pth.tar", net, arch,
                           data_parallel=data_parallel, legacy=legacy)
    if arch == "cifar_resnet110":
        assert_reference_names(state, net)
    write_project(tmp_path / "project.pt", net, arch, input_layer)
    selection = {"dataset": dataset, "data_root": data, "device": "cpu", "max_index": 2}
    released = load_evaluation(tmp_path / "released.pth.tar", input_layer=input_layer,
                               **selection)
    project = load_evaluation(tmp_path / "project.pt", **selection)
    expected = dataset or REFERENCE[arch][1]
    assert released.identity["dataset"] == project.identity["dataset"] == expected
    assert released.num_classes == project.num_classes
    _, _, mean, std = REFERENCE[arch]
    assert torch.equal(released.model[0].mean.flatten(), torch.tensor(mean))
    assert torch.equal(released.model[0].std.flatten(),
                       torch.tensor(std if input_layer == "normalize" else (1.0, 1.0, 1.0)))
    x = torch.stack([released.images[i][0] for i in released.indices])
    with torch.no_grad():
        logits = released.model.eval()(x)
        assert torch.equal(logits, project.model.eval()(x))
    assert not torch.allclose(logits[0], logits[1])  # the logits depend on the input


def test_resnet50_is_evaluated_on_imagenet_by_default(tmp_path, data):
    write_released(tmp_path / "r50.pth.tar", random_net("resnet50"), "resnet50",
                   data_parallel=True)
    ev = load_evaluation(tmp_path / "r50.pth.tar", input_layer="center",
                         data_root=data / "imagenet", device="cpu")
    assert ev.identity["dataset"] == "imagenet" and ev.num_classes == 1000
    assert ev.images[0][0].shape == (3, 224, 224)
    assert torch.equal(ev.model[0].mean.flatten(), torch.tensor(IMAGENET_MEAN))
    assert torch.equal(ev.model[0].std.flatten(), torch.ones(3))


@pytest.fixture(scope="module")
def r110(tmp_path_factory):
    """A released-layout ResNet-110 and its state dict, for the error cases."""
    path = tmp_path_factory.mktemp("r110") / "checkpoint.pth.tar"
    return path, write_released(path, random_net("cifar_resnet110"), "cifar_resnet110")


def error_line(capsys, args) -> str:
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    return err


def rewrite(path, r110, **changes) -> None:
    torch.save({"arch": "cifar_resnet110", "state_dict": r110[1], "epoch": 1, **changes}, path)


def test_a_released_checkpoint_without_input_layer_names_the_choices(r110, data, tmp_path,
                                                                      capsys):
    out = tmp_path / "c.tsv"
    err = error_line(capsys, cli("certify", r110[0], out, data))
    assert str(r110[0]) in err and "--input-layer" in err
    assert "normalize" in err and "center" in err and "Cohen" in err and "from-scratch" in err
    assert not out.exists()


@pytest.mark.parametrize("case,expected", [
    ("no_state_dict", "arch, state_dict"),
    ("unknown_arch", "'vgg16'"),
    ("other_depth", "missing 1.layer1.3.conv1.weight"),
    ("no_prefix", "unexpected entry 'conv1.weight'"),
    ("block_out_of_range", "unexpected key '1.layer1.3.conv1.weight'"),
    ("wrong_shape", "1.fc.weight has shape (100, 64), expected (10, 64)"),
])
def test_an_unknown_layout_is_one_line_naming_the_file_and_what_was_expected(
        r110, data, tmp_path, capsys, case, expected):
    path = tmp_path / "bad.pth.tar"
    state = dict(r110[1])
    if case == "no_state_dict":
        torch.save({"arch": "cifar_resnet110", "epoch": 3}, path)
    elif case == "unknown_arch":
        rewrite(path, r110, arch="vgg16")
    elif case == "other_depth":  # ResNet-20 weights labelled ResNet-110
        r20 = write_released(tmp_path / "r20.pth.tar", random_net("cifar_resnet20"),
                             "cifar_resnet20")
        rewrite(path, r110, state_dict=r20)
    elif case == "no_prefix":
        rewrite(path, r110, state_dict={k.removeprefix("1."): v for k, v in state.items()})
    elif case == "block_out_of_range":  # ResNet-110 weights labelled ResNet-20
        rewrite(path, r110, arch="cifar_resnet20")
    else:
        state["1.fc.weight"] = torch.zeros(100, 64)
        rewrite(path, r110, state_dict=state)
    err = error_line(capsys, cli("certify", path, tmp_path / "c.tsv", data, "--input-layer",
                                 "normalize"))
    assert str(path) in err and expected in err


def test_input_layer_is_refused_for_project_checkpoints_and_centering_for_imagenet32(
        resnet110_files, data, tmp_path, capsys):
    err = error_line(capsys, cli("certify", resnet110_files[1], tmp_path / "c.tsv", data,
                                 "--input-layer", "center"))
    assert str(resnet110_files[1]) in err and "--input-layer" in err
    path = tmp_path / "i32.pth.tar"
    write_released(path, random_net("imagenet32_resnet110"), "imagenet32_resnet110")
    err = error_line(capsys, cli("certify", path, tmp_path / "c.tsv", data, "--input-layer",
                                 "center"))
    assert str(path) in err and "imagenet32" in err and "normalize" in err


def test_resume_with_another_input_layer_is_refused(r110, data, tmp_path, capsys):
    out = tmp_path / "c.tsv"
    assert main(cli("certify", r110[0], out, data, "--input-layer", "center", "--max", "0")) == 0
    assert json.loads(meta_path(out).read_text())["input_layer"] == "center"
    err = error_line(capsys, cli("certify", r110[0], out, data, "--input-layer", "normalize",
                                 "--max", "0"))
    assert "input_layer='center'" in err and "input_layer='normalize'" in err
