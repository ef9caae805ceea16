"""Checkpoints: round trip, resumable training state, atomic writes, and refusing bad files."""

from __future__ import annotations

import pathlib
import random

import numpy as np
import pytest
import torch
from smoothadv.common.errors import UserError
from smoothadv.trainers import build_model, load_checkpoint, model_from_checkpoint, save_checkpoint
from smoothadv.trainers.checkpoint import (
    FORMAT_VERSION,
    REQUIRED_KEYS,
    CheckpointMismatch,
    atomic_write_bytes,
    payload_digest,
)
from smoothadv.trainers.models import place
from torch import nn

DOCUMENTED_KEYS = set(REQUIRED_KEYS) | {
    "input_shape", "config", "epoch", "optimizer", "scheduler",
}


def _trained_one_step(seed: int = 0):
    """A lenet on synthetic after one SGD-with-momentum step and one StepLR step."""
    torch.manual_seed(seed)
    model = build_model("lenet", "synthetic")
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    x, y = torch.rand(8, 1, 16, 16), torch.randint(4, (8,))
    loss = nn.functional.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    sched.step()
    return model, opt, sched


def _step(model, opt, sched, seed: int = 123):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.rand(8, 1, 16, 16, generator=g), torch.randint(4, (8,), generator=g)
    loss = nn.functional.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    sched.step()


def test_round_trip_model_optimizer_scheduler(tmp_path):
    model, opt, sched = _trained_one_step()
    path = tmp_path / "ck.pt"
    save_checkpoint(
        path, model, arch="lenet", dataset="synthetic", config={"sigma": 0.25, "lr": 0.1},
        epoch=3, optimizer=opt, scheduler=sched, extra={"best_acc": 0.75},
    )
    ckpt = load_checkpoint(path)
    assert DOCUMENTED_KEYS <= set(ckpt)
    assert ckpt["format_version"] == FORMAT_VERSION
    assert ckpt["arch"] == "lenet" and ckpt["dataset"] == "synthetic"
    assert ckpt["num_classes"] == 4 and list(ckpt["input_shape"]) == [1, 16, 16]
    assert ckpt["mean"] == pytest.approx([0.5]) and ckpt["std"] == pytest.approx([0.25])
    assert ckpt["config"] == {"sigma": 0.25, "lr": 0.1}
    assert ckpt["epoch"] == 3 and ckpt["best_acc"] == 0.75

    restored, ckpt2 = model_from_checkpoint(path, arch="lenet", dataset="synthetic")
    assert ckpt2["epoch"] == 3
    model = place(model, "cpu")  # the layout model_from_checkpoint gives on CPU
    model.eval()
    restored.eval()
    x = torch.rand(5, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(model(x), restored(x))
    for (k, a), (k2, b) in zip(model.state_dict().items(), restored.state_dict().items(),
                               strict=True):
        assert k == k2 and torch.equal(a, b), k

    # Optimizer and scheduler state reload into fresh objects and match.
    opt2 = torch.optim.SGD(restored.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    sched2 = torch.optim.lr_scheduler.StepLR(opt2, step_size=1, gamma=0.5)
    opt2.load_state_dict(ckpt["optimizer"])
    sched2.load_state_dict(ckpt["scheduler"])
    assert sched2.last_epoch == sched.last_epoch == 1
    assert sched2.get_last_lr() == sched.get_last_lr() == [pytest.approx(0.05)]
    assert opt2.param_groups[0]["lr"] == pytest.approx(0.05)
    momenta = [opt.state[p]["momentum_buffer"] for p in model.parameters()]
    momenta2 = [opt2.state[p]["momentum_buffer"] for p in restored.parameters()]
    assert len(momenta) == len(momenta2) > 0
    for a, b in zip(momenta, momenta2, strict=True):
        assert torch.equal(a, b)
    assert any(m.abs().sum() > 0 for m in momenta2)

    # Resuming gives the same next step as continuing.
    model.train()
    restored.train()
    _step(model, opt, sched)
    _step(restored, opt2, sched2)
    for a, b in zip(model.parameters(), restored.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert sched2.get_last_lr() == sched.get_last_lr()


def test_optional_state_is_none_when_not_given(tmp_path):
    path = tmp_path / "plain.pt"
    save_checkpoint(path, build_model("lenet", "synthetic"), arch="lenet", dataset="synthetic")
    ckpt = load_checkpoint(path)
    assert ckpt["optimizer"] is None and ckpt["scheduler"] is None
    assert ckpt["epoch"] == 0 and ckpt["config"] == {}


def test_wrapped_model_is_saved_unwrapped(tmp_path):
    class Wrapper(nn.Module):  # stands in for DistributedDataParallel
        def __init__(self, module):
            super().__init__()
            self.module = module

    inner = build_model("lenet", "synthetic")
    path = tmp_path / "w.pt"
    save_checkpoint(path, Wrapper(inner), arch="lenet", dataset="synthetic")
    ckpt = load_checkpoint(path)
    assert set(ckpt["state_dict"]) == set(inner.state_dict())
    restored, _ = model_from_checkpoint(path)
    x = torch.rand(2, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(place(inner, "cpu").eval()(x), restored.eval()(x))


def test_a_checkpoint_holds_no_generator_state(tmp_path):
    """Epoch randomness is seeded from (seed, epoch), so no generator state is stored (no
    Python/NumPy/torch state, which no resume would restore)."""
    path = tmp_path / "ck.pt"
    save_checkpoint(path, build_model("lenet", "synthetic"), arch="lenet", dataset="synthetic")
    ckpt = load_checkpoint(path)
    assert "rng" not in ckpt
    assert not [k for k, v in ckpt.items() if isinstance(v, torch.Tensor)
                and v.dtype == torch.uint8 and v.numel() > 1000]  # torch's 5056-byte state


def test_a_checkpoint_in_the_pre_digest_format_is_refused_in_one_line(tmp_path):
    """A checkpoint as smoothadv wrote it before digests (generator states under ``rng``, no
    ``sha256``) never shipped: it is refused, one line naming the file, never loaded."""
    np_state = np.random.get_state()
    old_rng = {"python": random.getstate(),
               "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)),
                         "pos": int(np_state[2]), "has_gauss": int(np_state[3]),
                         "gauss": float(np_state[4])},
               "torch": torch.get_rng_state()}
    path = tmp_path / "old.pt"
    save_checkpoint(path, build_model("lenet", "synthetic"), arch="lenet", dataset="synthetic",
                    epoch=2, extra={"rng": old_rng})
    payload = torch.load(path, weights_only=True)
    del payload["sha256"]
    torch.save(payload, path)
    refusal = f"{path}: not a smoothadv checkpoint (no sha256, the SHA-256 digest of its content)"
    for load in (load_checkpoint, model_from_checkpoint):
        with pytest.raises(UserError) as err:
            load(path)
        assert str(err.value) == refusal


@pytest.mark.parametrize("version", [2, 0, "1", True, None])
def test_a_checkpoint_of_another_format_version_is_refused_in_one_line(tmp_path, version):
    """Named with both versions, before its digest is checked (another version may digest
    otherwise), and as a wrong file (CheckpointMismatch), not a damaged one."""
    path = tmp_path / "other.pt"
    save_checkpoint(path, build_model("lenet", "synthetic"), arch="lenet", dataset="synthetic")
    payload = torch.load(path, weights_only=True)
    payload["format_version"] = version
    torch.save(payload, path)  # its digest left as it was: the version is refused first
    refusal = f"{path}: format_version {version!r}, this smoothadv reads {FORMAT_VERSION}"
    for load in (load_checkpoint, model_from_checkpoint):
        with pytest.raises(CheckpointMismatch) as err:
            load(path)
        assert str(err.value) == refusal


def test_atomic_write_leaves_no_temp_files(tmp_path):
    folder = tmp_path / "ckpts"
    path = folder / "model.pt"
    model = build_model("lenet", "synthetic")
    save_checkpoint(path, model, arch="lenet", dataset="synthetic")
    save_checkpoint(path, model, arch="lenet", dataset="synthetic", epoch=1)  # overwrite
    assert sorted(p.name for p in folder.iterdir()) == ["model.pt"]
    assert load_checkpoint(path)["epoch"] == 1


def test_atomic_write_failure_keeps_existing_file(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(b"the old contents")

    def write(f):
        f.write(b"half of the new cont")
        raise RuntimeError("disk full (simulated)")

    with pytest.raises(RuntimeError, match="simulated"):
        atomic_write_bytes(path, write)
    assert path.read_bytes() == b"the old contents"
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]

    atomic_write_bytes(path, lambda f: f.write(b"new"))
    assert path.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_save_checkpoint_failure_keeps_existing_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "model.pt"
    model = build_model("lenet", "synthetic")
    save_checkpoint(path, model, arch="lenet", dataset="synthetic", epoch=1)
    before = path.read_bytes()
    real_save = torch.save

    def failing_save(obj, f, *a, **k):
        real_save(obj, f, *a, **k)
        raise KeyboardInterrupt  # interrupted after writing, before the rename

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, model, arch="lenet", dataset="synthetic", epoch=2)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_truncated_checkpoint_names_file(tmp_path):
    path = tmp_path / "cut.pt"
    save_checkpoint(path, build_model("lenet", "synthetic"), arch="lenet", dataset="synthetic")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError) as err:
        load_checkpoint(path)
    assert str(path) in str(err.value)
    with pytest.raises(UserError, match="cut.pt"):
        model_from_checkpoint(path)


def test_missing_and_garbage_files_name_file(tmp_path):
    missing = tmp_path / "nope.pt"
    with pytest.raises(UserError) as err:
        load_checkpoint(missing)
    assert str(missing) in str(err.value)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00\x01not a checkpoint at all" * 10)
    with pytest.raises(UserError) as err:
        load_checkpoint(garbage)
    assert str(garbage) in str(err.value)


def test_arch_mismatch_names_file(tmp_path):
    path = tmp_path / "lenet.pt"
    save_checkpoint(path, build_model("lenet", "synthetic"), arch="lenet", dataset="synthetic")
    with pytest.raises(UserError) as err:
        model_from_checkpoint(path, arch="cifar_resnet20")
    assert str(path) in str(err.value)
    assert "arch" in str(err.value)
    with pytest.raises(UserError) as err:
        model_from_checkpoint(path, dataset="cifar10")
    assert str(path) in str(err.value) and "dataset" in str(err.value)


def test_relabelled_arch_weights_do_not_fit(tmp_path):
    path = tmp_path / "relabelled.pt"
    save_checkpoint(path, build_model("lenet", "synthetic"), arch="lenet", dataset="synthetic")
    payload = torch.load(path, weights_only=True)
    payload["arch"] = "cifar_resnet20"
    payload["sha256"] = payload_digest(payload)  # a well-formed file that lies about its arch
    torch.save(payload, path)
    assert load_checkpoint(path)["arch"] == "cifar_resnet20"  # still a well-formed checkpoint
    with pytest.raises(UserError) as err:
        model_from_checkpoint(path)
    assert str(path) in str(err.value)


def test_unknown_stored_arch_names_file(tmp_path):
    path = tmp_path / "vgg.pt"
    save_checkpoint(path, build_model("lenet", "synthetic"), arch="lenet", dataset="synthetic")
    payload = torch.load(path, weights_only=True)
    payload["arch"] = "vgg16"
    payload["sha256"] = payload_digest(payload)
    torch.save(payload, path)
    with pytest.raises(UserError) as err:
        model_from_checkpoint(path)
    assert str(path) in str(err.value) and "vgg16" in str(err.value)


def test_a_payload_changed_without_its_digest_is_corrupt(tmp_path):
    """The digest covers every value, not only the weights: an edited label is caught too."""
    path = tmp_path / "edited.pt"
    save_checkpoint(path, build_model("lenet", "synthetic"), arch="lenet", dataset="synthetic",
                    epoch=3)
    payload = torch.load(path, weights_only=True)
    payload["epoch"] = 4
    torch.save(payload, path)
    with pytest.raises(UserError, match="does not match the SHA-256 digest"):
        load_checkpoint(path)


def test_plain_state_dict_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "sd.pt"
    torch.save(build_model("lenet", "synthetic").state_dict(), path)
    with pytest.raises(UserError) as err:
        load_checkpoint(path)
    assert str(path) in str(err.value)
    with pytest.raises(UserError):
        model_from_checkpoint(path)
    # A bare tensor is refused the same way.
    torch.save(torch.zeros(3), tmp_path / "t.pt")
    with pytest.raises(UserError):
        load_checkpoint(tmp_path / "t.pt")


class _Touch:
    """Unpickling this calls ``pathlib.Path.touch(marker)``: code execution on load."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def _malicious_checkpoint(path: pathlib.Path, marker: pathlib.Path) -> None:
    payload = {k: None for k in REQUIRED_KEYS}
    payload.update(format_version=FORMAT_VERSION, arch="lenet", dataset="synthetic",
                   num_classes=4, mean=[0.5], std=[0.25], state_dict={"x": _Touch(marker)})
    torch.save(payload, path)


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    # The crafted file really does run code under an unsafe load...
    probe_marker = tmp_path / "probe-marker"
    _malicious_checkpoint(tmp_path / "probe.pt", probe_marker)
    torch.load(tmp_path / "probe.pt", weights_only=False)
    assert probe_marker.exists()

    # ...but load_checkpoint refuses it without running it.
    marker = tmp_path / "pwned-marker"
    evil = tmp_path / "evil.pt"
    _malicious_checkpoint(evil, marker)
    with pytest.raises(UserError) as err:
        load_checkpoint(evil)
    assert str(evil) in str(err.value)
    assert not marker.exists()
    with pytest.raises(UserError):
        model_from_checkpoint(evil)
    assert not marker.exists()


def test_stored_normalization_wins(tmp_path):
    model = build_model("cifar_resnet20", "cifar10")
    with torch.no_grad():
        model[0].mean.copy_(torch.tensor([0.1, 0.2, 0.3]).view(1, 3, 1, 1))
        model[0].std.copy_(torch.tensor([0.4, 0.5, 0.6]).view(1, 3, 1, 1))
    path = tmp_path / "norm.pt"
    save_checkpoint(path, model, arch="cifar_resnet20", dataset="cifar10")
    restored, _ = model_from_checkpoint(path)
    assert torch.equal(restored[0].mean, model[0].mean)
    assert torch.equal(restored[0].std, model[0].std)
    assert restored[0].mean.flatten().tolist() == pytest.approx([0.1, 0.2, 0.3])
    fresh = build_model("cifar_resnet20", "cifar10")
    assert not torch.equal(restored[0].mean, fresh[0].mean)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(place(model, "cpu").eval()(x), restored.eval()(x))


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_atomic_writes_follow_the_umask(tmp_path, umask, mode):
    """Files in shared storage get a new file's usual permissions, not mkstemp's private 0600."""
    import os

    old = os.umask(umask)
    try:
        atomic_write_bytes(tmp_path / "f.json", lambda f: f.write(b"{}"))
    finally:
        os.umask(old)
    assert (tmp_path / "f.json").stat().st_mode & 0o777 == mode
