"""Bucket storage round trips (issue 13): what a sweep in ``s3://…`` spends on uploads and on
reading the sweep back, against a real S3-compatible server (moto's, started here on
127.0.0.1) and, as the baseline measured in the same run, the same copies on local disk.

    .venv/bin/python benchmarks/bucket_roundtrip.py [--trials 640]

Prints, for each operation, seconds in the bucket, seconds on disk and their ratio, and the
bound each must stay under: a trial's per-epoch upload (checkpoint and metrics line) well
within an epoch's minutes; `sweep status` of the full grid from an empty cache in under a
minute. (moto keeps objects in memory on this machine: a cloud bucket adds network time.)
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CHECKPOINT_MB = 14  # a CIFAR-10 ResNet-110 checkpoint with its SGD momentum
ROWS = 500  # certification rows per trial (the paper's 500 test images)


def _moto() -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H",
                               "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return server, f"http://127.0.0.1:{port}"
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _trial_files(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "state.json").write_text('{"state": "TERMINATED", "trial_id": "abc"}\n')
    (folder / "trial.json").write_text('{"name": "x", "params": {"sigma": 0.25}}\n')
    (folder / "certify_plan.json").write_text('{"planned": 500}\n')
    (folder / "metrics.jsonl").write_text('{"epoch": 0, "train_loss": 1.0}\n' * 150)
    (folder / "certify.tsv").write_text("idx\tlabel\tpredict\tradius\tcorrect\ttime\n" + "".join(
        f"{i * 20}\t3\t3\t0.{i:04d}\t1\t0:00:01.5\n" for i in range(ROWS)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=640, help="trials in the sweep read back")
    args = parser.parse_args()
    server, endpoint = _moto()
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
                      AWS_DEFAULT_REGION="us-east-1", AWS_ENDPOINT_URL=endpoint)
    work = Path(tempfile.mkdtemp(prefix="bucket-bench-"))
    os.environ["SMOOTHADV_CACHE"] = str(work / "cache")
    try:
        import pyarrow.fs as pafs
        from smoothadv.common import layout
        from smoothadv.sweep.storage import Bucket, read_sweep
        from smoothadv.sweep.trial_sync import TrialSync

        pafs.S3FileSystem(endpoint_override=endpoint, access_key="bench", secret_key="bench",
                          region="us-east-1", allow_bucket_creation=True).create_dir("bench")
        local = work / "trial"
        local.mkdir()
        (local / "checkpoint.pt").write_bytes(os.urandom(CHECKPOINT_MB * 1024**2))
        _trial_files(local)
        sync = TrialSync(local, Bucket("s3://bench/one/trials/x"), lineage="a", rank=0,
                         every_s=60)
        disk = work / "disk-copy"
        rows = []
        bucket_s = _timed(sync.push)
        disk_s = _timed(lambda: shutil.copytree(local, disk))
        rows.append(("epoch upload (checkpoint + records)", bucket_s, disk_s, 60.0))
        with open(local / "certify.tsv", "a") as f:
            f.write("9999\t3\t3\t0.5\t1\t0:00:01.5\n")
        bucket_s = _timed(sync.push)
        disk_s = _timed(lambda: shutil.copy2(local / "certify.tsv", disk / "certify.tsv"))
        rows.append(("certification rows upload", bucket_s, disk_s, 5.0))
        shutil.rmtree(local)
        fresh = TrialSync(local, Bucket("s3://bench/one/trials/x"), lineage="a", rank=0,
                          every_s=60)
        bucket_s = _timed(fresh.pull)
        disk_s = _timed(lambda: shutil.copytree(disk, work / "disk-copy-2"))
        rows.append(("trial pull on a new node", bucket_s, disk_s, 60.0))

        grid = work / "grid"
        (grid).mkdir()
        (grid / layout.SPEC).write_text("name: grid\n")
        for i in range(args.trials):
            _trial_files(grid / layout.TRIALS / f"trial{i:04d}")
        fs, root = pafs.FileSystem.from_uri("s3://bench/grid")
        upload_s = _timed(lambda: pafs.copy_files(str(grid), root, destination_filesystem=fs,
                                                  use_threads=True))
        bucket_s = _timed(lambda: read_sweep("s3://bench/grid"))
        disk_s = _timed(lambda: shutil.copytree(grid, work / "grid-copy"))
        rows.append((f"read a {args.trials}-trial sweep (status/analyze)", bucket_s, disk_s, 60.0))
        again_s = _timed(lambda: read_sweep("s3://bench/grid"))
        rows.append(("the same, read again (cache current)", again_s, disk_s, 60.0))
        print(f"(uploading the {args.trials}-trial sweep took {upload_s:.1f} s)")
        print(f"{'operation':46} {'bucket s':>9} {'disk s':>8} {'ratio':>7} {'bound s':>8}")
        for name, b, d, bound in rows:
            flag = "" if b <= bound else "  OVER BOUND"
            print(f"{name:46} {b:9.3f} {d:8.3f} {b / max(d, 1e-6):7.1f} {bound:8.0f}{flag}")
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
