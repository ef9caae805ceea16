"""Hostile and mistaken input to every command that reads a checkpoint or a trial config: one
line on stderr (``smoothadv: error: ...``) naming the file or key, exit code 2, nothing written,
nothing run. In-process (``cli.main.main`` returns the exit code); a subprocess only where the
unguarded failure would be a hang or an exhausted memory."""

from __future__ import annotations

import dataclasses
import pickle
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from smoothadv.cli.main import main
from smoothadv.common.errors import UserError
from smoothadv.common.layout import CONFIG, METRICS, meta_path
from smoothadv.common.writer_lock import lock_path
from smoothadv.trainers.checkpoint import DIGEST_KEY, payload_digest, save_checkpoint
from smoothadv.trainers.config import TrialConfig, validate
from smoothadv.trainers.models import build_model
from smoothadv.trainers.self_training import write_extra_data

TRIAL = {"dataset": "synthetic", "arch": "lenet", "method": "gaussian", "sigma": 0.25,
         "epochs": 1, "warmup_epochs": 0, "batch_size": 50, "lr": 0.05, "train_subset": 100,
         "epoch_test_subset": 50, "device": "cpu"}
SMOOTHING = ("certify", "predict", "attack")
LOADERS = (*SMOOTHING, "pseudo-label", "train")  # train: the checkpoint as init_from


def trial_yaml(path: Path, **keys) -> Path:
    path.write_text(yaml.safe_dump({**TRIAL, **keys}))
    return path


def command(kind: str, ckpt: Path, tmp_path: Path, *extra: str) -> tuple[list[str], list[Path]]:
    """The argv of ``kind`` run on ``ckpt`` (small and fast), and what it would write."""
    out = tmp_path / "out.tsv"
    written = [out, meta_path(out), lock_path(out)]
    common = ["--n", "32", "--batch", "32", "--skip", "128", "--out", str(out), "--device", "cpu",
              "--no-progress"]
    if kind == "certify":
        return ["certify", str(ckpt), "--sigma", "0.25", "--n0", "8", *common, *extra], written
    if kind == "predict":
        return ["predict", str(ckpt), "--sigma", "0.25", *common, *extra], written
    if kind == "attack":
        return ["attack", str(ckpt), "--sigma", "0.25", "--epsilon", "0.25", "--steps", "1",
                "--m-test", "4", *common, *extra], written
    if kind == "pseudo-label":
        labels = tmp_path / "pseudo.pkl"
        return ["pseudo-label", str(ckpt), "--images", "synthetic:test", "--limit",
                "16", "--out", str(labels), "--device", "cpu", "--no-progress", *extra], [labels]
    assert kind == "train"
    run = tmp_path / "run"
    config = trial_yaml(tmp_path / "trial.yaml", init_from=str(ckpt))
    return ["train", str(config), "--out", str(run), "--no-progress", *extra], [run]


def run_main(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as e:  # argparse's exit is 2 too, but nothing else may end the process
        if argv[0] in LOADERS and not str(e.code).isdigit():
            pytest.fail(f"the input ended the process (SystemExit {e.code!r})")
        raise


def refused(capsys, argv: list[str], *names: str) -> tuple[str, str]:
    """Run ``argv``: exit 2 with one line naming each of ``names``; (that line, stdout)."""
    capsys.readouterr()
    code = run_main(argv)
    captured = capsys.readouterr()
    assert code == 2, captured
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("smoothadv: error: "), captured.err
    assert "Traceback" not in captured.err
    for name in names:
        assert name in lines[0], lines[0]
    return lines[0], captured.out


def relabelled(ckpt: Path, path: Path, **changes) -> Path:
    """A copy of ``ckpt`` with ``changes`` and a matching digest: a well-formed file."""
    payload = torch.load(ckpt, weights_only=True)
    payload.update(changes)
    payload[DIGEST_KEY] = payload_digest(payload)
    torch.save(payload, path)
    return path


# ------------------------------------------------------------------ not a checkpoint at all


class _Touch:
    """Unpickling this calls ``Path.touch(marker)``: code execution on an unsafe load."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def hostile_bytes(case: str, synthetic_checkpoint: Path, marker: Path) -> bytes:
    if case == "text":
        return b"hello world\n"
    if case == "zip_magic":
        return b"PK\x03\x04" + bytes(60)
    if case.startswith("random"):
        return random.Random(case).randbytes(300)
    if case == "empty":
        return b""
    if case == "digits":
        return b"1234567890"
    if case == "truncated":
        data = synthetic_checkpoint.read_bytes()
        return data[: len(data) // 2]
    if case == "plain_pickle":
        return pickle.dumps({"arch": "lenet", "dataset": "synthetic", "state_dict": {}})
    if case == "protocol0_pickle":
        return pickle.dumps({"a": [1, 2.5, "x"]}, protocol=0)
    if case == "global_os_system":
        return b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR."
    assert case == "torch_save_of_code"
    from io import BytesIO

    buffer = BytesIO()
    torch.save({"arch": "lenet", "state_dict": {"x": _Touch(marker)}}, buffer)
    return buffer.getvalue()


CASES = ["text", "zip_magic", "random0", "random1", "random2", "empty", "digits", "truncated",
         "plain_pickle", "protocol0_pickle", "global_os_system", "torch_save_of_code"]
CODE_CASES = ["global_os_system", "torch_save_of_code"]


@pytest.mark.parametrize("kind", LOADERS)
@pytest.mark.parametrize("case", CASES)
def test_a_file_that_is_no_checkpoint_is_one_line_naming_it(synthetic_checkpoint, tmp_path,
                                                            capsys, kind, case):
    marker = tmp_path / "pwned"
    bad = tmp_path / "text.pt"
    bad.write_bytes(hostile_bytes(case, synthetic_checkpoint, marker))
    argv, written = command(kind, bad, tmp_path)
    line, _ = refused(capsys, argv, str(bad))
    assert "weights_only" not in line  # never torch's advice to load it unsafely
    assert not marker.exists()
    if kind in SMOOTHING:
        written = written[:2]  # the lock beside OUT is taken before the file is read
    assert not any(p.exists() for p in written)


@pytest.mark.parametrize("case", CODE_CASES)
def test_a_pickle_that_needs_code_is_refused_as_such(synthetic_checkpoint, tmp_path, capsys,
                                                     case):
    marker = tmp_path / "pwned"
    bad = tmp_path / "evil.pt"
    bad.write_bytes(hostile_bytes(case, synthetic_checkpoint, marker))
    line, _ = refused(capsys, command("certify", bad, tmp_path)[0], str(bad))
    assert "run code" in line and "weights_only" not in line and "Re-running" not in line
    assert not marker.exists()


# ------------------------------------------------------------------ settings out of range


@pytest.mark.parametrize("kind", SMOOTHING)
@pytest.mark.parametrize("flags,key", [(["--sigma", "inf"], "sigma"),
                                       (["--sigma", "nan"], "sigma"),
                                       (["--seed", "-1"], "seed"),
                                       (["--seed", str(2**63)], "seed")])
def test_sigma_and_seed_out_of_range_write_nothing(synthetic_checkpoint, tmp_path, capsys, kind,
                                                   flags, key):
    argv, written = command(kind, synthetic_checkpoint, tmp_path, *flags)
    line, _ = refused(capsys, argv)
    assert line.startswith(f"smoothadv: error: {key}: ")
    assert not any(p.exists() for p in written)  # not even the lock beside OUT


@pytest.mark.parametrize("keys,key", [({"seed": -1}, "seed"), ({"seed": 2**63}, "seed"),
                                      ({"sigma": float("inf")}, "sigma"),
                                      ({"sigma": float("nan")}, "sigma")])
def test_a_trial_configs_sigma_and_seed_out_of_range_write_nothing(tmp_path, capsys, keys, key):
    config = trial_yaml(tmp_path / "trial.yaml", **keys)
    run = tmp_path / "run"
    refused(capsys, ["train", str(config), "--out", str(run), "--no-progress"],
            f"{config}: {key}: ")
    assert not run.exists()


def test_a_trial_config_built_in_code_is_validated_too():
    base = TrialConfig(dataset="synthetic", arch="lenet")
    for changes, key in (({"sigma": float("inf")}, "sigma"), ({"seed": -1}, "seed")):
        with pytest.raises(UserError, match=f"^{key}: "):
            validate(dataclasses.replace(base, **changes))


# ------------------------------------------------------------------ train writes only when sure


@pytest.mark.parametrize("existing", [False, True])
def test_a_missing_dataset_writes_nothing_and_the_corrected_run_trains(tmp_path, capsys,
                                                                      monkeypatch, existing):
    monkeypatch.chdir(tmp_path)  # no ./data here
    monkeypatch.delenv("SMOOTHADV_DATA", raising=False)
    run = tmp_path / "run"
    if existing:
        run.mkdir()
    wrong = trial_yaml(tmp_path / "wrong.yaml", dataset="mnist", data_root=str(tmp_path / "no"))
    refused(capsys, ["train", str(wrong), "--out", str(run), "--no-progress"], "mnist")
    assert run.exists() == existing and not (run / CONFIG).exists()
    right = trial_yaml(tmp_path / "right.yaml")
    assert run_main(["train", str(right), "--out", str(run), "--no-progress"]) == 0
    assert (run / CONFIG).is_file() and len((run / METRICS).read_text().splitlines()) == 1


def test_refused_extra_data_writes_nothing_and_the_corrected_run_trains(tmp_path, capsys):
    extra = tmp_path / "pseudo.pkl"  # CIFAR-shaped images for a 16×16 grayscale dataset
    write_extra_data(extra, np.zeros((8, 32, 32, 3), np.uint8), np.zeros(8, np.int64))
    run = tmp_path / "run"
    wrong = trial_yaml(tmp_path / "wrong.yaml", extra_data=str(extra))
    refused(capsys, ["train", str(wrong), "--out", str(run), "--no-progress"], str(extra))
    assert not run.exists()
    right = trial_yaml(tmp_path / "right.yaml")
    assert run_main(["train", str(right), "--out", str(run), "--no-progress"]) == 0
    assert (run / CONFIG).is_file()


# ------------------------------------------------------------------ YAML bombs

LEVELS = "abcdefghi"


def laughs() -> str:
    """A ~400-byte flow list whose aliases expand to 9**9 (≈ 387 million) strings."""
    items = ["&a [" + ",".join(["lol"] * 9) + "]"]
    items += [f"&{b} [" + ",".join([f"*{a}"] * 9) + "]"
              for a, b in zip(LEVELS, LEVELS[1:], strict=False)]
    return "[" + ", ".join(items) + "]"


GUARDED = textwrap.dedent("""
    import resource, sys, time
    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
    from smoothadv.trainers.config import load_trial_config
    t0 = time.monotonic()
    try:
        load_trial_config(sys.argv[1], sys.argv[2:])
    except Exception as e:
        print(type(e).__name__, f"{time.monotonic() - t0:.3f}", str(e)[:300])
""")


@pytest.mark.parametrize("where", ["file", "--set"])
def test_a_billion_laughs_trial_config_is_refused_at_once(tmp_path, capsys, where):
    config = tmp_path / "laughs.yaml"
    if where == "file":
        config.write_text(f"arch: {laughs()}\n")
        overrides = []
    else:
        trial_yaml(config)
        overrides = [f"arch={laughs()}"]
    assert len(config.read_text() + "".join(overrides)) < 1000
    # unguarded, the expansion exhausts memory: first in a child with 2 GiB at most
    child = subprocess.run([sys.executable, "-c", GUARDED, str(config), *overrides],
                           capture_output=True, text=True, timeout=60,
                           cwd=Path(__file__).parent.parent)
    name, seconds, message = (child.stdout.split(" ", 2) + ["", "", ""])[:3]
    assert name == "UserError" and float(seconds) < 1, child.stdout[:300] + child.stderr[-300:]
    assert "expands to more than" in message
    run = tmp_path / "run"
    argv = ["train", str(config), "--out", str(run), "--no-progress"]
    for item in overrides:
        argv += ["--set", item]
    refused(capsys, argv, "expands to more than")
    assert not run.exists()


# ------------------------------------------------------------------ import paths in checkpoints


@pytest.mark.parametrize("kind", LOADERS)
@pytest.mark.parametrize("key,value", [("arch", "builtins:print"), ("arch", "sys:exit"),
                                       ("arch", "this:s"), ("dataset", "builtins:print"),
                                       ("dataset", "this:s")])
def test_a_checkpoints_import_path_runs_nothing_unless_named(synthetic_checkpoint, tmp_path,
                                                             capsys, monkeypatch, kind, key,
                                                             value):
    monkeypatch.delitem(sys.modules, "this", raising=False)  # importing it prints the Zen
    evil = relabelled(synthetic_checkpoint, tmp_path / "evil.pt", **{key: value})
    argv, written = command(kind, evil, tmp_path)
    line, out = refused(capsys, argv, str(evil), value)
    assert out == ""  # nothing printed: nothing imported or called
    assert "this" not in sys.modules
    if kind != "train":  # train: the trial's own arch and dataset, which the file's differ from
        assert line.endswith(f"name it yourself to trust it: --{key} {value}")
    if kind in SMOOTHING:
        written = written[:2]
    assert not any(p.exists() for p in written)


PLUGIN = '''
from torch import nn


class TinyNet(nn.Module):
    def __init__(self, info):
        super().__init__()
        c, h, w = info.input_shape
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, 8), nn.ReLU())
        self.fc = nn.Linear(8, info.num_classes)

    def forward(self, x):
        return self.fc(self.body(x))


def tiny_net(info):
    return TinyNet(info)
'''


@pytest.fixture
def plugin_checkpoint(tmp_path, monkeypatch):
    """A synthetic-dataset checkpoint whose arch is a user's plug-in ``module:tiny_net``
    (the module not imported yet); its arch."""
    name = "smoothadv_hostile_plugin"
    (tmp_path / f"{name}.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    arch = f"{name}:tiny_net"
    path = tmp_path / "plugin.pt"
    save_checkpoint(path, build_model(arch, "synthetic"), arch=arch, dataset="synthetic")
    sys.modules.pop(name)
    yield path, arch
    sys.modules.pop(name, None)


def test_naming_a_plugin_arch_trusts_it(plugin_checkpoint, tmp_path, capsys):
    path, arch = plugin_checkpoint
    module = arch.partition(":")[0]
    argv, written = command("certify", path, tmp_path)
    refused(capsys, argv, f"--arch {arch}")
    assert module not in sys.modules and not written[0].exists()
    _, out = refused(capsys, command("certify", path, tmp_path, "--arch", "builtins:print")[0],
                     "expected 'builtins:print'")  # another path named: refused, not run
    assert out == "" and module not in sys.modules
    assert run_main(command("certify", path, tmp_path, "--arch", arch)[0]) == 0
    assert len(written[0].read_text().splitlines()) == 1 + 4  # header and images 0, 128, …
    argv, written = command("pseudo-label", path, tmp_path, "--arch", arch)
    assert run_main(argv) == 0 and written[0].is_file()


def test_a_trial_naming_the_plugin_arch_fine_tunes_from_it(plugin_checkpoint, tmp_path):
    path, arch = plugin_checkpoint
    config = trial_yaml(tmp_path / "trial.yaml", arch=arch, init_from=str(path))
    assert run_main(["train", str(config), "--out", str(tmp_path / "run"), "--no-progress"]) == 0


def test_an_arch_that_is_no_name_is_one_line(synthetic_checkpoint, tmp_path, capsys):
    odd = relabelled(synthetic_checkpoint, tmp_path / "odd.pt", arch=torch.zeros(2))
    line, _ = refused(capsys, command("certify", odd, tmp_path)[0], str(odd))
    assert "arch is a Tensor" in line
    odd = relabelled(synthetic_checkpoint, tmp_path / "odd2.pt", state_dict=[1, 2])
    refused(capsys, command("predict", odd, tmp_path)[0], str(odd), "state_dict")
