"""Fuzzing the files of a sweep folder: `sweep status` and `analyze` on hostile files.

A sweep folder is written by the tool's own writers, without Ray: the spec as `sweep run`
writes it, each trial's trial.json and state.json as its trial driver (sweep.trial_driver,
sweep.early_stopping) writes them, a trial trained (trainers.train: config.yaml,
metrics.jsonl), certified and attacked (sweep.trial_worker: certify.tsv + its .meta.json and
certify_plan.json, attack.tsv), a staged sweep's stages.json (sweep.staged_sweep) and the driver's
driver.json (sweep.driver_record). Then, with a fixed seed, one file at a time is mutated
(bytes flipped, cut short, lines deleted or repeated, values swapped for text, negatives, huge
numbers, inf, nan or null, keys deleted, JSON types changed, binary garbage, an empty file)
and the commands that read it run in-process: each must either succeed or exit 2 with one
line on stderr naming the mutated file, never let an exception out of main().
"""

from __future__ import annotations

import json
import math
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from smoothadv.analysis import figures
from smoothadv.cli.main import main
from smoothadv.common import layout, stages_file
from smoothadv.common.atomic import atomic_write_bytes
from smoothadv.common.provenance import software
from smoothadv.sweep import staged_sweep
from smoothadv.sweep.driver_record import this_driver
from smoothadv.sweep.early_stopping import write_stopped
from smoothadv.sweep.spec import parse_spec
from smoothadv.sweep.spec_record import spec_yaml
from smoothadv.sweep.storage import SweepFolder
from smoothadv.sweep.trial_worker import attack_trial, certify_trial
from smoothadv.trainers.train import train_trial

SEED = 20261207
MUTATIONS = 300
TINY = {"dataset": "synthetic", "arch": "lenet", "train_subset": 64, "epoch_test_subset": 32,
        "batch_size": 32, "lr": 0.05, "method": "gaussian", "device": "cpu", "epochs": 2,
        "certify": {"n0": 10, "n": 64, "skip": 2, "max": 24, "batch_size": 64}}
SPEC = {"name": "fuzz", "defaults": TINY, "grid": {"sigma": [0.25, 0.5]},
        "attack_eval": {"epsilons": [0.25, 0.5], "steps": 1, "m_test": 2, "n": 16, "skip": 8,
                        "max": 24},
        "stages": {"n": 64, "skip": 2}}
DONE, STOPPED = "sigma0.25", "sigma0.5"
STATUS, ANALYZE = "status", "analyze"
# Each file mutated → the commands that read it.
TARGETS = {
    layout.SPEC: {STATUS},
    layout.DRIVER: {STATUS},
    layout.STAGES: {STATUS, ANALYZE},
    **{f"{layout.TRIALS}/{DONE}/{name}": readers for name, readers in (
        (layout.STATE, {STATUS}), (layout.METRICS, {STATUS}), (layout.TRIAL_INFO, {ANALYZE}),
        (layout.CONFIG, {ANALYZE}), (layout.CERTIFY, {STATUS, ANALYZE}),
        (layout.CERTIFY + layout.META, {ANALYZE}), (layout.CERTIFY_PLAN, {STATUS, ANALYZE}),
        (layout.ATTACK, {ANALYZE}))},
    **{f"{layout.TRIALS}/{STOPPED}/{name}": readers for name, readers in (
        (layout.STATE, {STATUS}), (layout.METRICS, {STATUS}), (layout.TRIAL_INFO, {ANALYZE}),
        (layout.CONFIG, {ANALYZE}))},
}
VALUES: list[Any] = ["x", "", "RUNNING", -1, -5.5, 0, 1, 7, 0.5, 10**30, 1e308, math.inf,
                     -math.inf, math.nan, None, True, [], {}, [1, "a"], {"a": 1}]
CELLS = ["x", "", "-5", "-1", "0", "1", "7", "0.5", "2.5", "inf", "-inf", "nan", "1e400",
         "99999999999999999999", "1.5", "NA", "0:00:01", "9999999 days, 0:00:00"]


def build_sweep(root: Path) -> Path:
    """A staged sweep of two trials as its writers leave it: sigma0.25 trained, certified,
    attacked and RUNNING (its driver alive: this process), sigma0.5 trained one epoch and
    STOPPED by the schedule at stage 1."""
    spec = parse_spec(SPEC)
    folder = root / spec.name
    sweep = SweepFolder(folder)
    folder.mkdir(parents=True)
    text = spec_yaml(spec)  # as sweep.lifecycle
    atomic_write_bytes(folder / layout.SPEC, lambda f: f.write(text))
    done, stopped = spec.trials()
    assert (done.name, stopped.name) == (DONE, STOPPED)
    for trial in (done, stopped):
        tdir = layout.trial_dir(folder, trial.name)
        sweep.write_json(tdir / layout.TRIAL_INFO, {"name": trial.name, "params": trial.params,
                                                    "provenance": software()})
        sweep.write_json(tdir / layout.STATE, {"state": "RUNNING", "trial_id": trial.name,
                                               "started_at": time.time()})
    tdir = layout.trial_dir(folder, DONE)
    train_trial(done.config, tdir, progress=False)
    certify_trial(done.config, tdir, 0, 1, torch.device("cpu"))
    attack_trial(done.config, spec.attack_eval, tdir, 0, 1, torch.device("cpu"))
    one_epoch = parse_spec({**SPEC, "defaults": {**TINY, "epochs": 1}}).trials()[1]
    train_trial(one_epoch.config, layout.trial_dir(folder, STOPPED), progress=False)
    write_stopped(sweep, layout.trial_dir(folder, STOPPED) / layout.STATE,
                  "dominated at rung 1 (epoch 1)")
    staged_sweep.begin(sweep, stages_file.DONE, {
        DONE: {"stage": 2, "why": ""}, STOPPED: {"stage": 1, "why": "dominated at rung 1"}})
    sweep.write_json(folder / layout.DRIVER, {**this_driver([]), "heartbeat": time.time()})
    return folder.resolve()


@pytest.fixture(scope="module")
def fuzz_sweep(tmp_path_factory) -> Path:
    return build_sweep(tmp_path_factory.mktemp("fuzz"))


@pytest.fixture
def no_figure_files(monkeypatch):
    """Skip encoding the figures (PNG and PDF: most of an analyze run); they are still drawn."""
    monkeypatch.setattr(figures, "save", lambda fig, folder, stem: [])


def run(command: str, folder: Path, report: Path) -> list[str]:
    return (["sweep", "status", str(folder)] if command == STATUS
            else ["analyze", str(folder), "-o", str(report)])


def test_the_tools_own_files_are_read_without_complaint(fuzz_sweep, tmp_path, capsys,
                                                        no_figure_files):
    for rel in TARGETS:
        assert (fuzz_sweep / rel).is_file(), rel
    assert main(run(STATUS, fuzz_sweep, tmp_path / "r")) == 0
    out = capsys.readouterr().out
    assert "RUNNING" in out and "STOPPED" in out and "12/12" in out  # 12 images certified
    assert main(run(ANALYZE, fuzz_sweep, tmp_path / "r")) == 0
    assert "1 trials certified" in capsys.readouterr().out


# --- mutations ------------------------------------------------------------------------------


def _nodes(value: Any, path: tuple = ()) -> list[tuple]:
    """Every path into a JSON/YAML value (the root is ())."""
    found = [path]
    if isinstance(value, dict):
        for k, v in value.items():
            found += _nodes(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found += _nodes(v, (*path, i))
    return found


def _structural(rng: random.Random, value: Any) -> tuple[Any, str]:
    """``value`` with one node swapped for another value or type, or one key deleted."""
    path = rng.choice(_nodes(value))
    if not path:
        new = rng.choice([[value], "text", 5, None, [], True])
        return new, f"record → {new!r:.40}"
    *parents, key = path
    node = value
    for p in parents:
        node = node[p]
    if isinstance(node, dict) and rng.random() < 0.3:
        del node[key]
        return value, f"{'.'.join(map(str, path))} deleted"
    node[key] = new = rng.choice(VALUES)
    return value, f"{'.'.join(map(str, path))} → {new!r:.40}"


def _lines(data: bytes) -> list[bytes]:
    return data.split(b"\n")


def mutate(rng: random.Random, rel: str, data: bytes) -> tuple[bytes, str]:
    """One random mutation of the file ``rel`` (its bytes ``data``) and what it did."""
    kind = Path(rel).suffix
    if rng.random() < 0.55:  # a mutation that knows the format
        if kind in (".json", ".yaml"):
            value = json.loads(data) if kind == ".json" else yaml.safe_load(data)
            value, what = _structural(rng, value)
            text = (json.dumps(value) if kind == ".json"
                    else yaml.safe_dump(value, sort_keys=False))
            return text.encode(), what
        lines = _lines(data)
        n = rng.randrange(len(lines) - 1)  # a complete line
        if kind == ".jsonl":
            value, what = _structural(rng, json.loads(lines[n]))
            lines[n] = json.dumps(value).encode()
            return b"\n".join(lines), f"line {n + 1}: {what}"
        fields = lines[n].split(b"\t")  # a results TSV
        c = rng.randrange(len(fields))
        fields[c] = rng.choice(CELLS).encode()
        lines[n] = b"\t".join(fields)
        return b"\n".join(lines), f"line {n + 1} field {c + 1} → {fields[c]!r}"
    op = rng.choice(["flip", "truncate", "delete line", "repeat line", "garbage", "empty"])
    if op == "flip":
        out = bytearray(data)
        for _ in range(rng.randint(1, 3)):
            out[rng.randrange(len(out))] ^= rng.randrange(1, 256)
        return bytes(out), op
    if op == "truncate":
        at = rng.randrange(len(data))
        return data[:at], f"{op} at {at}"
    if op in ("delete line", "repeat line"):
        lines = _lines(data)
        n = rng.randrange(max(len(lines) - 1, 1))
        lines[n:n + 1] = [] if op == "delete line" else [lines[n], lines[n]]
        return b"\n".join(lines), f"{op} {n + 1}"
    if op == "garbage":
        return rng.randbytes(rng.randint(1, 300)), op
    return b"", op


def test_mutated_files_are_read_or_refused_in_one_line_naming_them(fuzz_sweep, tmp_path, capsys,
                                                                    no_figure_files):
    rng = random.Random(SEED)
    originals = {rel: (fuzz_sweep / rel).read_bytes() for rel in TARGETS}
    outcomes: Counter = Counter()
    for i in range(MUTATIONS):
        rel = rng.choice(sorted(TARGETS))
        path = fuzz_sweep / rel
        data, what = mutate(rng, rel, originals[rel])
        path.write_bytes(data)
        try:
            for command in sorted(TARGETS[rel]):
                case = f"mutation {i}: {rel}: {what}; {command}"
                try:
                    code = main(run(command, fuzz_sweep, tmp_path / "report"))
                except BaseException as e:  # noqa: BLE001 (the test's point: nothing escapes)
                    pytest.fail(f"{case}: {type(e).__name__} escaped main(): {e}")
                err = capsys.readouterr().err
                if code == 0:
                    outcomes["read"] += 1
                    continue
                lines = err.splitlines()
                assert code == 2, (case, code, err)
                assert len(lines) == 1 and lines[0].startswith("smoothadv: error: "), (case, err)
                assert str(path) in lines[0], (case, err)
                outcomes["refused"] += 1
        finally:
            path.write_bytes(originals[rel])
    total = sum(outcomes.values())
    # both outcomes in sizeable shares: the mutations reach past the first check
    assert outcomes["read"] > 0.15 * total and outcomes["refused"] > 0.15 * total, outcomes
