"""`smoothadv certify` / `predict` end to end: output format, resume, shards, refusals."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pandas as pd
import pytest
from smoothadv.certify.runner import select_indices
from smoothadv.cli.main import main
from smoothadv.common.layout import meta_path

CERTIFY_HEADER = ["idx", "label", "predict", "radius", "correct", "time", "pA_lower"]


def certify_args(ckpt, out, *extra):
    return ["certify", str(ckpt), "--sigma", "0.25", "--n0", "20", "--n", "200", "--alpha",
            "0.01", "--batch", "64", "--skip", "16", "--out", str(out), "--device", "cpu",
            "--no-progress", *extra]


def read(path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t")


def without_time(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.drop(columns="time").reset_index(drop=True)


@pytest.fixture
def full_run(synthetic_checkpoint, tmp_path):
    out = tmp_path / "full.tsv"
    assert main(certify_args(synthetic_checkpoint, out)) == 0
    return read(out)


def test_select_indices_follows_cohens_skip_and_max():
    assert select_indices(100, skip=20) == [0, 20, 40, 60, 80]
    assert select_indices(100, skip=20, max_index=50) == [0, 20, 40]
    assert select_indices(100, skip=20, start=30, stop=81) == [40, 60, 80]
    assert select_indices(10, skip=1, start=8, stop=100) == [8, 9]


def test_certify_writes_one_reference_format_row_per_image(full_run, capsys):
    assert list(full_run.columns) == CERTIFY_HEADER
    assert full_run["idx"].tolist() == list(range(0, 512, 16))
    assert set(full_run["correct"]) <= {0, 1}
    abstained = full_run["predict"] == -1
    assert (full_run.loc[abstained, "radius"] == 0).all()
    assert (full_run.loc[~abstained, "pA_lower"] >= 0.5).all()
    # the trained model certifies most of the (easy) synthetic test images
    assert full_run["correct"].mean() > 0.8
    assert full_run["time"].str.match(r"^\d+:\d\d:\d\d(\.\d+)?$").all()


def test_resume_after_torn_line_equals_uninterrupted_run(synthetic_checkpoint, tmp_path,
                                                         full_run):
    out = tmp_path / "resumed.tsv"
    assert main(certify_args(synthetic_checkpoint, out, "--max", "100")) == 0
    before = out.read_bytes()
    with open(out, "ab") as f:  # a crash in the middle of writing the next row
        f.write(b"112\t3\t3\t0.31")
    assert main(certify_args(synthetic_checkpoint, out)) == 0
    assert out.read_bytes().startswith(before)  # the finished rows were kept, not redone
    resumed = read(out)
    assert resumed["idx"].is_unique
    pd.testing.assert_frame_equal(without_time(resumed), without_time(full_run))


def test_rerun_of_finished_file_changes_nothing(synthetic_checkpoint, tmp_path):
    out = tmp_path / "c.tsv"
    assert main(certify_args(synthetic_checkpoint, out)) == 0
    before = out.read_bytes()
    assert main(certify_args(synthetic_checkpoint, out)) == 0
    assert out.read_bytes() == before


def test_shards_concatenate_to_the_unsharded_result(synthetic_checkpoint, tmp_path, full_run):
    parts = []
    for start, stop in [(0, 200), (200, 512)]:
        out = tmp_path / f"shard{start}.tsv"
        assert main(certify_args(synthetic_checkpoint, out, "--start", str(start),
                                 "--stop", str(stop))) == 0
        parts.append(read(out))
    pd.testing.assert_frame_equal(without_time(pd.concat(parts)), without_time(full_run))


@pytest.mark.parametrize("flag,value", [("--sigma", "0.5"), ("--n", "300"), ("--alpha", "0.05"),
                                        ("--n0", "10"), ("--seed", "1")])
def test_different_settings_are_refused_and_nothing_is_touched(synthetic_checkpoint, tmp_path,
                                                               capsys, flag, value):
    out = tmp_path / "c.tsv"
    assert main(certify_args(synthetic_checkpoint, out, "--max", "40")) == 0
    before = out.read_bytes()
    capsys.readouterr()
    args = certify_args(synthetic_checkpoint, out)
    if flag in args:
        args[args.index(flag) + 1] = value
    else:
        args += [flag, value]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    key = flag.lstrip("-")
    assert len(err.splitlines()) == 1 and str(out) in err
    assert f"was written with {key}=" in err and f"asks for {key}={value}" in err, err
    assert out.read_bytes() == before


def test_another_checkpoint_is_refused(synthetic_checkpoint, tmp_path, capsys):
    from smoothadv.trainers import build_model, save_checkpoint

    other = tmp_path / "other.pt"
    save_checkpoint(other, build_model("lenet", "synthetic"), arch="lenet", dataset="synthetic")
    out = tmp_path / "c.tsv"
    assert main(certify_args(synthetic_checkpoint, out, "--max", "20")) == 0
    assert main(certify_args(other, out)) == 2
    assert "checkpoint_sha256" in capsys.readouterr().err


def test_file_without_settings_record_is_not_appended_to(synthetic_checkpoint, tmp_path, capsys):
    out = tmp_path / "reference.tsv"
    out.write_text("idx\tlabel\tpredict\tradius\tcorrect\ttime\n0\t1\t1\t0.5\t1\t0:00:01\n")
    before = out.read_bytes()
    assert main(certify_args(synthetic_checkpoint, out)) == 2
    assert meta_path(out).name in capsys.readouterr().err
    assert out.read_bytes() == before


@pytest.mark.parametrize("version", [2, None, True, "1"])
def test_a_settings_record_of_another_format_version_is_refused_in_one_line(
        synthetic_checkpoint, tmp_path, capsys, version):
    """The record is written with format_version 1; a record of another version, or of none
    (None: the key removed), is refused naming it and both versions, the rows untouched."""
    out = tmp_path / "c.tsv"
    assert main(certify_args(synthetic_checkpoint, out, "--max", "40")) == 0
    record = json.loads(meta_path(out).read_text())
    assert record["format_version"] == 1
    if version is None:
        del record["format_version"]
    else:
        record["format_version"] = version
    meta_path(out).write_text(json.dumps(record))
    before = out.read_bytes()
    capsys.readouterr()
    assert main(certify_args(synthetic_checkpoint, out)) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"smoothadv: error: {meta_path(out)}: format_version {version!r}, this smoothadv reads 1"]
    assert out.read_bytes() == before


def test_predict_writes_reference_columns_and_resumes(synthetic_checkpoint, tmp_path):
    out = tmp_path / "p.tsv"
    args = ["predict", str(synthetic_checkpoint), "--sigma", "0.25", "--n", "200", "--alpha",
            "0.01", "--batch", "100", "--skip", "32", "--out", str(out), "--no-progress"]
    assert main([*args, "--max", "200"]) == 0
    before = out.read_bytes()
    assert main(args) == 0
    assert out.read_bytes().startswith(before)  # resumed after the finished rows
    rows = read(out)
    assert list(rows.columns) == ["idx", "label", "predict", "correct", "time"]
    assert rows["idx"].tolist() == list(range(0, 512, 32))
    assert rows["correct"].mean() > 0.8


def run_cli(*args, cwd=None):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "smoothadv.cli.main", *args], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=120)


def test_help_lists_commands():
    result = run_cli("--help")
    assert result.returncode == 0
    assert "certify" in result.stdout and "predict" in result.stdout


@pytest.mark.parametrize("problem", ["missing", "truncated", "bad_value"])
def test_bad_input_is_one_line_exit_2_no_traceback(synthetic_checkpoint, tmp_path, problem):
    ckpt = tmp_path / "model.pt"
    extra = []
    if problem == "truncated":
        data = synthetic_checkpoint.read_bytes()
        ckpt.write_bytes(data[: len(data) // 2])
    elif problem == "bad_value":
        ckpt = synthetic_checkpoint
        extra = ["--alpha", "0.7"]
    out = tmp_path / "c.tsv"
    result = run_cli(*certify_args(ckpt, out)[:-1], *extra)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert ("alpha" in lines[0]) if problem == "bad_value" else (str(ckpt) in lines[0])
    assert not out.exists()


def test_a_second_writer_of_the_same_out_is_refused_until_the_first_dies(synthetic_checkpoint,
                                                                           tmp_path):
    """Two `certify` into one --out: the second is refused in one line naming the first
    (which is frozen with SIGSTOP while it holds the lock); once the first is SIGKILLed its
    lock is free, and the same command resumes and ends with one row per image."""
    import signal
    import time

    from smoothadv.common.writer_lock import holder, lock_path

    out = tmp_path / "shared.tsv"
    command = [sys.executable, "-m", "smoothadv.cli.main", *certify_args(synthetic_checkpoint, out)]
    first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lock = lock_path(out)
    deadline = time.monotonic() + 120
    while holder(lock) != first.pid:
        assert first.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    first.send_signal(signal.SIGSTOP)
    try:
        second = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert second.returncode == 2, second.stderr
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and f"--out {out}: another process is writing it (pid " \
            f"{first.pid} on " in lines[0], lines
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    third = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert third.returncode == 0, third.stderr
    assert read(out)["idx"].tolist() == list(range(0, 512, 16))  # each image once
