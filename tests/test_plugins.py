"""A user's own architecture and dataset, plugged in by import path (``module:name``): trained
with `smoothadv train`, certified with `smoothadv certify`, bad paths refused in one line."""

from __future__ import annotations

import itertools
import sys
import textwrap

import pandas as pd
import pytest
import torch
import yaml
from smoothadv.cli.main import main
from smoothadv.common.errors import UserError
from smoothadv.trainers.checkpoint import model_from_checkpoint
from smoothadv.trainers.config import parse_trial_config
from smoothadv.trainers.models import NormalizeLayer

USER_MODULE = '''
import torch
from torch import nn
from torch.utils.data import Dataset

CALLS = []


class TinyNet(nn.Module):
    def __init__(self, info):
        super().__init__()
        c, h, w = info.input_shape
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, 16), nn.ReLU())
        self.fc = nn.Linear(16, info.num_classes)

    def forward(self, x):
        return self.fc(self.body(x))


def tiny_net(info):
    return TinyNet(info)


def not_a_module(info):
    return "a string"


class Stripes(Dataset):
    """Three classes of 2x8x8 images, brighter with the class."""

    num_classes = 3
    input_shape = (2, 8, 8)
    mean = (0.5, 0.4)
    std = (0.25, 0.2)

    def __init__(self, split, root, download=False, augment=True):
        CALLS.append((split, root, download, augment))
        g = torch.Generator().manual_seed(0 if split == "train" else 1)
        n = 24 if split == "train" else 6
        self.labels = torch.arange(n) % 3
        self.images = 0.1 + 0.3 * self.labels.view(-1, 1, 1, 1) + 0.05 * torch.rand(
            n, 2, 8, 8, generator=g)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.images[i], int(self.labels[i])


def without_metadata(split, root, download=False, augment=True):
    return Stripes(split, root)


NOT_CALLABLE = 3
'''

_names = itertools.count()


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """A module written into tmp_path (put on sys.path) under a fresh name; the name."""
    name = f"smoothadv_user_plugin_{next(_names)}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(USER_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def trial_yaml(path, **keys):
    path.write_text(yaml.safe_dump({
        "method": "gaussian", "epochs": 1, "warmup_epochs": 0, "batch_size": 8, "lr": 0.05,
        "m_train": 1, "steps": 1, "device": "cpu", **keys}))
    return path


def test_user_arch_and_dataset_train_then_certify(tmp_path, user_module, capsys):
    arch, dataset = f"{user_module}:tiny_net", f"{user_module}:Stripes"
    spec = trial_yaml(tmp_path / "trial.yaml", arch=arch, dataset=dataset,
                      data_root=str(tmp_path / "somewhere"))
    run = tmp_path / "run"
    assert main(["train", str(spec), "--out", str(run), "--no-progress"]) == 0
    calls = sys.modules[user_module].CALLS
    assert calls == [("train", str(tmp_path / "somewhere"), False, True),
                     ("test", str(tmp_path / "somewhere"), False, False)]

    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    assert (ckpt["arch"], ckpt["dataset"], ckpt["num_classes"]) == (arch, dataset, 3)
    assert ckpt["input_shape"] == [2, 8, 8]

    sys.modules.pop(user_module)  # certify imports the module afresh from the recorded path
    with pytest.raises(UserError, match="is an import path, which would run that code"):
        model_from_checkpoint(run / "checkpoint.pt")  # not named: refused, nothing imported
    assert user_module not in sys.modules
    model, _ = model_from_checkpoint(run / "checkpoint.pt", arch=arch, dataset=dataset)
    assert isinstance(model[0], NormalizeLayer)  # the input layer added as for built-ins
    assert model[0].mean.flatten().tolist() == pytest.approx([0.5, 0.4])
    assert model[0].std.flatten().tolist() == pytest.approx([0.25, 0.2])
    assert type(model[1]).__name__ == "TinyNet" and model[1].fc.out_features == 3

    out = tmp_path / "certify.tsv"
    capsys.readouterr()
    assert main(["certify", str(run / "checkpoint.pt"), "--sigma", "0.25", "--n0", "4",
                 "--n", "16", "--batch", "16", "--out", str(out), "--device", "cpu",
                 "--no-progress", "--arch", arch, "--dataset", dataset]) == 0
    rows = pd.read_csv(out, sep="\t")
    assert rows["label"].tolist() == [0, 1, 2, 0, 1, 2]
    assert sys.modules[user_module].CALLS == [("test", None, False, False)]


def test_validation_resolves_without_loading_data(user_module):
    c = parse_trial_config({"arch": f"{user_module}:tiny_net",
                            "dataset": f"{user_module}:Stripes"})
    assert c.arch == f"{user_module}:tiny_net"
    assert sys.modules[user_module].CALLS == []  # metadata read, no data loaded


BAD = [
    ("arch", "smoothadv_no_such_module:net", "cannot import module 'smoothadv_no_such_module'"),
    ("arch", "{m}:missing", "has no attribute 'missing'"),
    ("arch", "{m}:NOT_CALLABLE", "not callable"),
    ("arch", "{m}:", "not an import path"),
    ("dataset", "smoothadv_no_such_module:data", "cannot import module"),
    ("dataset", "{m}:Missing", "has no attribute 'Missing'"),
    ("dataset", "{m}:NOT_CALLABLE", "not callable"),
    ("dataset", "{m}:without_metadata", "lacks attribute 'num_classes'"),
]


@pytest.mark.parametrize("key,path,fragment", BAD)
def test_bad_import_path_is_one_line_error_before_anything_runs(tmp_path, user_module, capsys,
                                                                 key, path, fragment):
    path = path.format(m=user_module)
    keys = {"arch": f"{user_module}:tiny_net", "dataset": f"{user_module}:Stripes", key: path}
    with pytest.raises(UserError) as err:
        parse_trial_config(keys)
    assert str(err.value).startswith(f"{key}: ") and path in str(err.value)
    assert fragment in str(err.value)

    spec = trial_yaml(tmp_path / "trial.yaml", **keys)
    run = tmp_path / "run"
    capsys.readouterr()
    assert main(["train", str(spec), "--out", str(run), "--no-progress"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and f"{key}: " in lines[0] and path in lines[0], lines
    assert not run.exists()
    if user_module in sys.modules:
        assert sys.modules[user_module].CALLS == []


def test_module_failing_on_import_is_one_line(tmp_path, monkeypatch):
    broken = tmp_path / "smoothadv_broken_plugin.py"
    broken.write_text("raise RuntimeError('no GPU here\\nat all')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(UserError) as err:
        parse_trial_config({"arch": "smoothadv_broken_plugin:net"})
    msg = str(err.value)
    assert msg.startswith("arch: ") and "RuntimeError: no GPU here" in msg
    assert len(msg.splitlines()) == 1


def test_builder_must_return_a_module(user_module):
    from smoothadv.trainers.models import build_model

    with pytest.raises(UserError, match=r"arch: .*not_a_module.* returned a str"):
        build_model(f"{user_module}:not_a_module", "synthetic")
