"""One worker's local trial folder kept in step with the trial's folder in a bucket.

A rank copies the trial down when it starts (:meth:`TrialSync.pull`, into :func:`worker_copy`,
this node's workers' copy) and uploads the files it
writes: after every epoch (the checkpoint with its metrics line), after its certification
shard is complete, and at least every ``every_s`` seconds from a background thread while it
runs, so a node that disappears loses only what it wrote since the last upload.

Which copy wins when a trial starts on a node that already holds one (it ran there before):
within one Tune trial (its id is the lineage; ``--restart-errored`` starts a new one and the
old local copy is cleared) the append-only files (certification rows, metrics lines) keep the
longer copy, since both are prefixes of the same rows (each image's noise is seeded by its
index); everything else, the checkpoint included, is taken from the bucket. A local metrics
file ahead of the bucket's checkpoint is trimmed back to it when training resumes.
"""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

from smoothadv.common import layout
from smoothadv.sweep.storage import Bucket, mirror_dir

APPEND_ONLY = (".tsv", ".jsonl")
DRIVER_FILES = (layout.STATE, layout.TRIAL_INFO)  # written and uploaded by the trial driver
PREVIOUS = layout.PREVIOUS + ".pt"  # checkpoint.prev.pt (trainers.checkpoint.previous_path)
SNAPSHOT = ".checkpoint.uploading"  # the checkpoint as one push uploads it (TrialSync.push)
PLANS = (layout.CERTIFY_PLAN, layout.CERTIFY_STAGE1_PLAN)  # uploaded before any results file


def _owner(name: str) -> int | None:
    """The rank that uploads ``name``: a shard's rank, else rank 0 (None: the trial driver's,
    and the previous checkpoint kept beside the newest: a bucket's object is never torn)."""
    if name in DRIVER_FILES or name.endswith(PREVIOUS):
        return None
    shard = layout.shard_rank(name)
    return 0 if shard is None else shard


def worker_copy(trial_uri: str) -> Path:
    """Where a trial's workers on this node keep their copy of the trial at ``trial_uri``:
    apart from the copy the sweep's commands pull into (storage.mirror_dir), which would
    otherwise replace files the workers are still appending to."""
    return mirror_dir(trial_uri, kind="workers")


class TrialSync:
    """Uploads what this rank writes in ``local`` to ``remote``; see the module docstring."""

    def __init__(self, local: Path, remote: Bucket, *, lineage: str, rank: int, every_s: float):
        self.local, self.remote, self.lineage = local, remote, lineage
        self.rank, self.every_s = rank, every_s
        self._sent: dict[str, tuple[int, int]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def pull(self) -> None:
        """Make the local copy the trial as the bucket holds it (see the module docstring)."""
        marker = self.local / layout.LINEAGE
        if self.local.exists() and (not marker.exists() or marker.read_text() != self.lineage):
            shutil.rmtree(self.local, ignore_errors=True)  # another trial's rows
        self.local.mkdir(parents=True, exist_ok=True)
        marker.write_text(self.lineage)
        for rel, size in self.remote.files():
            if rel.startswith(".") or "/" in rel:
                continue
            path = self.local / rel
            ours = path.stat().st_size if path.is_file() else -1
            if rel.endswith(APPEND_ONLY) and ours >= size:
                continue
            self.remote.download(rel, path)
            self._remember(path)

    def fetch(self, *names: str) -> None:
        """Copy these files down from the bucket (another rank's shard, rank 0's checkpoint)."""
        for name in names:
            self.remote.download(name, self.local / name)
            self._remember(self.local / name)

    def push(self) -> list[str]:
        """Upload this rank's files changed since they were last sent; returns their names.

        The checkpoint commits an epoch (trainers.train.finish_epoch writes the epoch's metrics
        line first), so it is taken first, as a hard-linked snapshot, and uploaded last: every
        metrics line written before it is then in the bucket before it, and the bucket never
        holds a checkpoint whose epoch has no metrics line, however the push interleaves with
        training. Certification plans go first, so no results file is there without its plan."""
        with self._lock:
            snapshot = self._snapshot_checkpoint()
            sent = []
            # a plan before its results file: analysis refuses results without their plan
            plans_first = lambda p: (p.name not in PLANS, p.name)  # noqa: E731
            for path in sorted(self.local.iterdir(), key=plans_first):
                name = path.name
                if (name.startswith(".") or name == layout.CHECKPOINT or not path.is_file()
                        or _owner(name) != self.rank):
                    continue
                if self._upload_if_changed(path, name):
                    sent.append(name)
            if snapshot is not None:
                if self._upload_if_changed(snapshot, layout.CHECKPOINT):
                    sent.append(layout.CHECKPOINT)
                snapshot.unlink(missing_ok=True)
            return sent

    def _snapshot_checkpoint(self) -> Path | None:
        """The checkpoint as it is now, in a hidden file that later epochs do not replace (None:
        none, or not this rank's)."""
        source = self.local / layout.CHECKPOINT
        if _owner(layout.CHECKPOINT) != self.rank or not source.is_file():
            return None
        snapshot = self.local / SNAPSHOT
        snapshot.unlink(missing_ok=True)
        try:
            os.link(source, snapshot)  # the inode: atomic saves rename a new file over the name
        except FileNotFoundError:
            return None
        except OSError:  # a filesystem without hard links: one read of one complete file
            shutil.copyfile(source, snapshot)
            shutil.copystat(source, snapshot)
        return snapshot

    def _upload_if_changed(self, path: Path, name: str) -> bool:
        stamp = self._stamp(path)
        if stamp is None or self._sent.get(name) == stamp:
            return False
        self.remote.upload(path, name)
        self._sent[name] = stamp
        return True

    def start(self) -> None:
        """Upload every ``every_s`` seconds from a background thread until :meth:`stop`."""
        def loop() -> None:
            while not self._stop.wait(self.every_s):
                try:
                    self.push()
                except OSError as e:  # the bucket unreachable for a while: try again later
                    print(f"{self.local.name}: upload failed ({e}); retrying in "
                          f"{self.every_s:g} s", flush=True)

        self._thread = threading.Thread(target=loop, name="trial-upload", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the background uploads and send what is left."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.push()

    @staticmethod
    def _stamp(path: Path) -> tuple[int, int] | None:
        try:
            st = path.stat()
        except FileNotFoundError:  # replaced between listing and upload
            return None
        return st.st_size, st.st_mtime_ns

    def _remember(self, path: Path) -> None:
        stamp = self._stamp(path)
        if stamp is not None:
            self._sent[path.name] = stamp
