"""Sweeps stored in a bucket (``--storage s3://…``), against a real S3-compatible server (moto's
server mode) started on 127.0.0.1 by these tests: a node lost mid-certification whose sweep
resumes from what it had uploaded, then status and analyze from another machine's empty cache;
a missing bucket; the rules that keep a node's copy of a trial and the bucket in step."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import BUCKET
from smoothadv.common import layout
from smoothadv.sweep.storage import Bucket
from smoothadv.sweep.trial_sync import TrialSync

TINY = {"dataset": "synthetic", "arch": "lenet", "train_subset": 256, "epoch_test_subset": 64,
        "epochs": 2, "batch_size": 64, "lr": 0.05, "warmup_epochs": 1, "steps": 1,
        "epsilon": 0.25, "device": "cpu",
        "certify": {"n0": 16, "n": 100, "batch_size": 100, "skip": 64}}


def _cli(env: dict, cache: Path, *args: str, **kwargs) -> subprocess.CompletedProcess:
    """The `smoothadv` command as a user on a machine whose local copies live in ``cache``."""
    full = {**os.environ, **env, "SMOOTHADV_CACHE": str(cache)}
    full.pop("SMOOTHADV_FAULTS", None)
    return subprocess.run([sys.executable, "-m", "smoothadv.cli.main", *args], env=full,
                          capture_output=True, text=True, timeout=600, **kwargs)


def _keys(prefix: str) -> dict[str, int]:
    return dict(Bucket(f"s3://{BUCKET}/{prefix}").files())


def test_a_node_lost_while_certifying_resumes_from_its_uploads(s3_server, tmp_path):
    """A sweep in the bucket with more trials than slots (2, one at a time); its only node is
    killed (SIGKILL, its local copy wiped) once the bucket holds a row of the first trial's
    certification and the second is still queued; a second driver meanwhile
    is refused; `sweep resume` from a fresh machine keeps the trained epochs and the uploaded
    rows and runs the rest, a second resume changes nothing, and a third machine reads the
    results with `sweep status` and `analyze`."""
    defaults = {**TINY, "epoch_test_subset": 512,
                "certify": {"n0": 16, "n": 1000, "batch_size": 500, "skip": 32}}  # 16 images
    spec = {"name": "lost", "defaults": defaults,
            "resources": {"workers": 1, "cpus_per_worker": 1, "upload_every_s": 0.5,
                          "max_concurrent": 1},
            "grid": {"sigma": [0.25, 0.5]}}
    names = ["sigma0.25", "sigma0.5"]
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    uri = f"s3://{BUCKET}/run2/lost"
    head = tmp_path / "head-cache"
    # the first trial parks after its first certified row: the second stays queued until the
    # kill (sweep.faults)
    markers = tmp_path / "markers"
    full = {**os.environ, **s3_server, "SMOOTHADV_CACHE": str(head),
            "SMOOTHADV_FAULTS": f"hold_certified:1:sigma0.25:{markers}"}
    driver = subprocess.Popen([sys.executable, "-m", "smoothadv.cli.main",
                               "sweep", "run", str(path),
                               "--storage", f"s3://{BUCKET}/run2", "--verbose", "0"],
                              env=full, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    trial = Bucket(uri).child(f"{layout.TRIALS}/sigma0.25")
    deadline = time.monotonic() + 300
    rows = b""
    while rows.count(b"\n") < 2:
        assert driver.poll() is None and time.monotonic() < deadline, "no rows uploaded"
        time.sleep(0.2)
        rows = trial.read_bytes(layout.CERTIFY) or b""
    second = _cli(s3_server, tmp_path / "other-cache", "sweep", "resume", uri)
    assert second.returncode == 2 and "is still running" in second.stderr, second.stderr
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    assert not Bucket(uri).exists(f"{layout.TRIALS}/sigma0.5/{layout.STATE}"), "none queued"
    uploaded_metrics = trial.read_bytes("metrics.jsonl").decode().splitlines()
    uploaded_rows = trial.read_bytes(layout.CERTIFY).decode().splitlines()
    assert len(uploaded_rows) == 2  # the header and the first image's row
    ray_processes = [tuple(p) for p in json.loads(Bucket(uri).read_bytes(layout.DRIVER))
                     ["ray_processes"]]
    from smoothadv.sweep import processes

    processes.end(ray_processes)  # the node is gone, and its processes with it
    shutil.rmtree(head)

    status = _cli(s3_server, tmp_path / "new-head", "sweep", "status", uri)
    assert "INTERRUPTED" in status.stdout, status.stdout + status.stderr
    assert "`sweep resume` runs 2 trials" in status.stdout, status.stdout
    resumed = _cli(s3_server, tmp_path / "new-head", "sweep", "resume", uri, "--verbose", "0")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    final_metrics = trial.read_bytes("metrics.jsonl").decode().splitlines()
    assert final_metrics == uploaded_metrics  # both epochs kept: none trained again
    final_rows = trial.read_bytes(layout.CERTIFY).decode().splitlines()
    assert len(final_rows) == 1 + 16
    assert final_rows[:len(uploaded_rows) - 1] == uploaded_rows[:-1]  # (the last may be torn)
    for name in names:
        state = json.loads(Bucket(uri).read_bytes(f"{layout.TRIALS}/{name}/{layout.STATE}"))
        assert state["state"] == "TERMINATED", (name, state)
    keys = _keys("run2/lost")
    assert layout.SPEC in keys and layout.DRIVER not in keys  # the driver ended cleanly
    assert any(k.startswith(f"{layout.TUNE}/") for k in keys)  # Tune's state, by Tune
    assert any(k.startswith(f"{layout.TRAIN}/") for k in keys)  # Train's checkpoints
    assert f"{layout.TRIALS}/sigma0.25/checkpoint.pt" in keys
    again = _cli(s3_server, tmp_path / "third-cache", "sweep", "resume", uri, "--verbose", "0")
    assert again.returncode == 0 and "nothing to resume" in again.stdout, again.stderr
    assert _keys("run2/lost") == keys

    other = tmp_path / "laptop-cache"  # another machine: nothing local yet
    status = _cli(s3_server, other, "sweep", "status", uri)
    assert status.returncode == 0, status.stderr
    assert "2 trials: 2 terminated" in status.stdout and "16/16" in status.stdout
    report = _cli(s3_server, other, "analyze", uri, "-o", str(tmp_path / "report"))
    assert report.returncode == 0, report.stderr[-2000:]
    curves = pd.read_csv(tmp_path / "report" / "certified_accuracy.csv")
    assert curves["trial"].astype(str).str.contains("sigma0.25").any()
    assert not list(other.rglob("*.pt"))  # status and analyze never copy checkpoints down


CLAIM = """
import sys, time
from smoothadv.sweep import driver_record
from smoothadv.sweep.storage import open_sweep
from smoothadv.common.errors import UserError
sweep = open_sweep(sys.argv[1])
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))  # both claim at the same instant
try:
    release = driver_record.claim(sweep, driver_record.this_driver([]))
except UserError as e:
    print("refused:", e)
else:
    print("holds")
    time.sleep(3)
    release()
"""


def test_two_drivers_claiming_a_bucket_sweep_at_once_one_holds_it(s3_server, tmp_path):
    """A bucket has no lock: the driver record is the lease (sweep.driver_record). Two drivers
    on two machines claiming the same sweep in the same instant: exactly one holds it."""
    uri = f"s3://{BUCKET}/lease/race"
    at = time.time() + 3
    claims = [subprocess.Popen([sys.executable, "-c", CLAIM, uri, str(at)],
                               env={**os.environ, **s3_server,
                                    "SMOOTHADV_CACHE": str(tmp_path / f"machine{i}")},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
              for i in range(2)]
    outs = [c.communicate(timeout=60) for c in claims]
    said = sorted(out.strip().splitlines()[-1] for out, _ in outs)
    assert said[0] == "holds" and said[1].startswith("refused:"), outs
    assert "another sweep driver" in said[1]
    assert not Bucket(uri).exists(layout.DRIVER)  # the holder's record went with it


def test_a_bucket_that_does_not_exist_is_one_line(s3_server, tmp_path):
    spec = {"name": "nowhere", "defaults": TINY, "grid": {"sigma": [0.25]}}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    run = _cli(s3_server, tmp_path / "cache", "sweep", "run", str(path), "--storage",
               "s3://no-such-bucket/x", "--verbose", "0")
    assert run.returncode == 2, run.stderr[-2000:]
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("smoothadv: error: --storage s3://no-such-bucket/x/nowhere: ")


# TrialSync's rules, file by file (see sweep.trial_sync)


def _sync(s3_server, local: Path, prefix: str, lineage: str = "t1", rank: int = 0):
    return TrialSync(local, Bucket(f"s3://{BUCKET}/{prefix}"), lineage=lineage, rank=rank,
                     every_s=60)


def test_pull_keeps_longer_local_rows_and_takes_the_checkpoint_from_the_bucket(s3_server,
                                                                               tmp_path):
    remote = Bucket(f"s3://{BUCKET}/sync1")
    remote.write_bytes("certify.tsv", b"idx\n0\n")
    remote.write_bytes("metrics.jsonl", b'{"epoch": 0}\n{"epoch": 1}\n')
    remote.write_bytes("checkpoint.pt", b"bucket")
    local = tmp_path / "trial"
    sync = _sync(s3_server, local, "sync1")
    local.mkdir()
    (local / ".lineage").write_text("t1")
    (local / "certify.tsv").write_bytes(b"idx\n0\n1\n")  # rows not yet uploaded: kept
    (local / "metrics.jsonl").write_bytes(b'{"epoch": 0}\n')  # behind the bucket: replaced
    (local / "checkpoint.pt").write_bytes(b"local!")
    sync.pull()
    assert (local / "certify.tsv").read_bytes() == b"idx\n0\n1\n"
    assert (local / "metrics.jsonl").read_bytes() == b'{"epoch": 0}\n{"epoch": 1}\n'
    assert (local / "checkpoint.pt").read_bytes() == b"bucket"
    assert sync.push() == ["certify.tsv"]  # only what the bucket lacks goes up
    assert remote.read_bytes("certify.tsv") == b"idx\n0\n1\n"
    assert sync.push() == []


def test_pull_clears_a_local_copy_of_another_trial_lineage(s3_server, tmp_path):
    remote = Bucket(f"s3://{BUCKET}/sync2")
    remote.write_bytes("metrics.jsonl", b'{"epoch": 0}\n')
    local = tmp_path / "trial"
    local.mkdir()
    (local / ".lineage").write_text("old-trial-id")  # restarted from scratch since
    (local / "metrics.jsonl").write_bytes(b'{"epoch": 0}\n{"epoch": 1}\n{"epoch": 2}\n')
    (local / "certify.tsv").write_bytes(b"idx\n0\n")
    _sync(s3_server, local, "sync2", lineage="new-trial-id").pull()
    assert (local / "metrics.jsonl").read_bytes() == b'{"epoch": 0}\n'
    assert not (local / "certify.tsv").exists()


def test_each_rank_uploads_only_its_own_files(s3_server, tmp_path):
    local = tmp_path / "trial"
    local.mkdir()
    for name in ("checkpoint.pt", "checkpoint.prev.pt", "certify.part0of2.tsv",
                 "certify.part1of2.tsv",
                 "certify.part1of2.tsv.meta.json", "state.json", ".certify.tsv.x.tmp"):
        (local / name).write_text(name)
    assert _sync(s3_server, local, "sync3", rank=1).push() == [
        "certify.part1of2.tsv", "certify.part1of2.tsv.meta.json"]
    assert _sync(s3_server, local, "sync3", rank=0).push() == [
        "certify.part0of2.tsv", "checkpoint.pt"]  # state.json is the trial driver's


def _epoch(local: Path, epoch: int) -> None:
    """What trainers.train.finish_epoch leaves after ``epoch``: its metrics line, then the
    checkpoint of ``epoch + 1`` epochs, atomically renamed over the old one."""
    with open(local / layout.METRICS, "a") as f:
        f.write(json.dumps({"epoch": epoch}) + "\n")
    (local / "new.tmp").write_text(f"weights after {epoch + 1} epochs")
    os.replace(local / "new.tmp", local / layout.CHECKPOINT)


def _bucket_epochs(prefix: str) -> tuple[int, int]:
    """(epochs the bucket's checkpoint holds, metrics lines the bucket holds)."""
    remote = Bucket(f"s3://{BUCKET}/{prefix}")
    ckpt = int(remote.read_bytes(layout.CHECKPOINT).decode().split()[2])
    return ckpt, len(remote.read_bytes(layout.METRICS).decode().splitlines())


def test_the_bucket_never_holds_a_checkpoint_ahead_of_its_metrics_lines(s3_server, tmp_path):
    """The checkpoint commits an epoch: a push that dies half-way, or that races the next
    epoch's files, leaves the bucket with every metrics line its checkpoint's epochs wrote
    (more is fine: resuming trims lines past the checkpoint and trains those epochs again)."""
    local = tmp_path / "trial"
    local.mkdir()
    _epoch(local, 0)

    class Dies(Bucket):  # the node is lost after ``lives`` uploads of a push
        lives = 1

        def upload(self, path: Path, rel: str) -> None:
            if Dies.lives == 0:
                raise OSError("node lost")
            Dies.lives -= 1
            super().upload(path, rel)

    sync = TrialSync(local, Dies(f"s3://{BUCKET}/sync4"), lineage="a", rank=0, every_s=60)
    Dies.lives = 2
    sync.push()
    assert _bucket_epochs("sync4") == (1, 1)
    _epoch(local, 1)
    Dies.lives = 1
    with pytest.raises(OSError, match="node lost"):
        sync.push()
    ckpt, lines = _bucket_epochs("sync4")
    assert ckpt <= lines, (ckpt, lines)

    class Races(Bucket):  # training finishes another epoch while the push uploads
        def upload(self, path: Path, rel: str) -> None:
            super().upload(path, rel)
            if rel == layout.METRICS and not (local / "raced").exists():
                (local / "raced").touch()
                _epoch(local, 2)

    sync = TrialSync(local, Races(f"s3://{BUCKET}/sync5"), lineage="a", rank=0, every_s=60)
    sync.push()
    ckpt, lines = _bucket_epochs("sync5")
    assert ckpt <= lines, (ckpt, lines)
    sync.push()  # the next push catches up
    assert _bucket_epochs("sync5") == (3, 3)
    assert not any(p.name.startswith(".checkpoint") for p in local.iterdir())


def test_a_command_reading_the_sweep_never_replaces_a_running_workers_files(s3_server,
                                                                           tmp_path,
                                                                           monkeypatch):
    """`sweep status` (or stop, analyze) on a node whose workers are writing a trial pulls the
    bucket's copy, which lags behind them: it must land beside the workers' copy, not over it
    (the metrics line and rows since the last upload would be lost)."""
    from smoothadv.sweep.storage import read_sweep
    from smoothadv.sweep.trial_sync import worker_copy

    monkeypatch.setenv("SMOOTHADV_CACHE", str(tmp_path / "cache"))
    uri = f"s3://{BUCKET}/readers"
    remote = Bucket(uri)
    remote.write_bytes(layout.SPEC, b"name: readers\n")
    remote.write_bytes(f"{layout.TRIALS}/t/{layout.METRICS}", b'{"epoch": 0}\n')
    ours = worker_copy(f"{uri}/{layout.TRIALS}/t")
    ours.mkdir(parents=True)
    written = b'{"epoch": 0}\n{"epoch": 1}\n'  # epoch 1 not yet uploaded
    (ours / layout.METRICS).write_bytes(written)
    folder = read_sweep(uri)
    assert (layout.trial_dir(folder.local, "t") / layout.METRICS).read_bytes() == \
        b'{"epoch": 0}\n'
    assert (ours / layout.METRICS).read_bytes() == written


def test_an_object_replaced_while_it_is_read_is_read_whole(s3_server):
    """A reader never gets a replaced object cut at its old size: pyarrow's S3 reader sizes the
    read with one request and fetches with another, so schedule.json rewritten (longer) between
    the two came back truncated (a worker's read of it once failed to parse). A writer thread
    alternates a short and a long version while the reader reads; every read is one whole
    version."""
    import threading

    bucket = Bucket(f"s3://{BUCKET}/replaced")
    versions = [json.dumps({"n": 0}).encode(), json.dumps({"n": 1, "pad": "x" * 50_000}).encode()]
    bucket.write_bytes("schedule.json", versions[0])
    done = threading.Event()

    def rewrite() -> None:
        i = 0
        while not done.is_set():
            i += 1
            bucket.write_bytes("schedule.json", versions[i % 2])
            time.sleep(0.01)  # the driver writes now and then, not without pause

    writer = threading.Thread(target=rewrite)
    writer.start()
    try:
        reads = [bucket.read_bytes("schedule.json") for _ in range(80)]
    finally:
        done.set()
        writer.join()
    assert all(data in versions for data in reads), sorted({len(d) for d in reads})
    assert bucket.read_bytes("missing.json") is None
