"""Sweep folders in a bucket: ``--storage s3://bucket/prefix`` (or ``gs://``, any URI pyarrow's
filesystems open).

Every process works on a local copy of the folder, laid out as common.layout says, and keeps the
bucket in step with it:

- the sweep driver and the Tune trial drivers upload the small records they write (sweep.yaml,
  driver.json, trial.json, state.json) as soon as they write them;
- a trial's workers copy the trial's folder down when they start (:meth:`SweepFolder.pull_trial`)
  and upload what they write after every epoch and at least every ``upload_every_s`` seconds
  while they certify (sweep.trial_sync); a node that disappears loses only the rows written
  since the last upload;
- ``sweep status``, ``analyze`` and ``resume`` copy down the records and results (never the
  checkpoints) before they read them.

Ray Tune keeps its experiment state and Ray Train its checkpoints in the bucket themselves
(``storage_path`` is the URI). Credentials and endpoints come from the environment, as pyarrow
reads them (e.g. AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL for an
S3-compatible server); every node of the cluster needs them.

The local copy lives under SMOOTHADV_CACHE (default ``~/.cache/smoothadv``), in ``sweeps/`` and
the URI's scheme and path.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from smoothadv.common import layout
from smoothadv.common.atomic import atomic_write_bytes
from smoothadv.common.errors import UserError

CACHE_ENV = "SMOOTHADV_CACHE"
CHECKPOINT_SUFFIXES = (".pt",)  # not copied down by status, analyze and resume
PULL_THREADS = 16
READ_TRIES = 20  # reads of an object replaced meanwhile (Bucket.read_bytes)


def is_uri(storage: str | Path) -> bool:
    """Whether ``storage`` names a bucket (a URI) rather than a local or mounted folder."""
    return "://" in str(storage)


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or "~/.cache/smoothadv").expanduser()


def mirror_dir(uri: str, kind: str = "sweeps") -> Path:
    """This node's local copy of the folder at ``uri``: CACHE/<kind>/<scheme>/<path>. The
    drivers and the commands that read a sweep (status, stop, analyze, resume) keep theirs
    under ``sweeps``; a trial's workers keep theirs apart, under ``workers``
    (sweep.trial_sync), so that a command pulling the bucket's copy never replaces a file a
    worker on the same node is writing (a metrics line or certification rows not yet
    uploaded would be lost)."""
    scheme, _, path = uri.partition("://")
    parts = [p for p in path.split("/") if p not in ("", ".", "..")]
    return cache_root() / kind / scheme / Path(*parts)


@dataclass(frozen=True)
class Bucket:
    """A folder in a pyarrow filesystem, addressed by paths relative to it."""

    uri: str

    @property
    def _fs(self):
        fs, root = _open(self.uri)
        return fs, root

    def child(self, name: str) -> Bucket:
        return Bucket(f"{self.uri.rstrip('/')}/{name}")

    def _path(self, rel: str) -> str:
        fs, root = self._fs
        return f"{root.rstrip('/')}/{rel}" if rel else root

    def exists(self, rel: str) -> bool:
        import pyarrow.fs as pafs

        fs, _ = self._fs
        return fs.get_file_info(self._path(rel)).type != pafs.FileType.NotFound

    def read_bytes(self, rel: str) -> bytes | None:
        """The file's bytes, or None when it is missing.

        pyarrow's S3 reader learns an object's size from one request and fetches that many bytes
        with others: an object replaced in between (a schedule.json the driver rewrites while a
        worker reads it) comes back cut at the old size, or the read fails. So a read counts only
        when the object's size and time are the same just before and just after it and the bytes
        are that size; otherwise it is read again, up to READ_TRIES times."""
        import pyarrow.fs as pafs

        fs, _ = self._fs
        path = self._path(rel)
        for _ in range(READ_TRIES):
            before = fs.get_file_info(path)
            if before.type == pafs.FileType.NotFound:
                return None
            try:
                with fs.open_input_stream(path, compression=None) as f:
                    data = f.read()
            except FileNotFoundError:
                return None
            except OSError:  # cut short by a replacement
                continue
            after = fs.get_file_info(path)
            if after.size == before.size == len(data) and after.mtime_ns == before.mtime_ns:
                return data
        raise UserError(f"{self.uri}/{rel}: the object kept changing while it was read "
                        f"({READ_TRIES} tries)")

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Upload ``data`` (an object store replaces an object whole: readers never see half)."""
        fs, _ = self._fs
        with fs.open_output_stream(self._path(rel)) as f:
            f.write(data)

    def upload(self, local: Path, rel: str) -> None:
        import pyarrow.fs as pafs

        fs, _ = self._fs
        pafs.copy_files(str(local), self._path(rel), destination_filesystem=fs)

    def copy(self, src: str, dst: str) -> None:
        fs, _ = self._fs
        fs.copy_file(self._path(src), self._path(dst))

    def files(self, rel: str = "") -> Iterator[tuple[str, int]]:
        """(path relative to ``rel``, size) of every file under ``rel``."""
        for path, size, _ in self.stamped_files(rel):
            yield path, size

    def stamped_files(self, rel: str = "", recursive: bool = True
                      ) -> Iterator[tuple[str, int, int]]:
        """(path relative to ``rel``, size, modification time in ns) of every file under it."""
        import pyarrow.fs as pafs

        fs, _ = self._fs
        base = self._path(rel).rstrip("/")
        selector = pafs.FileSelector(base, recursive=recursive, allow_not_found=True)
        for info in fs.get_file_info(selector):
            if info.type == pafs.FileType.File:
                yield info.path[len(base) + 1:], info.size, info.mtime_ns or 0

    def download(self, rel: str, local: Path, mtime_ns: int = 0) -> None:
        """Copy the file down, atomically (a reader of ``local`` sees the old or the new); with
        ``mtime_ns`` (the bucket's time of the object) the copy gets it as its own."""
        data = self.read_bytes(rel)
        if data is None:
            raise FileNotFoundError(f"{self.uri}/{rel}")
        atomic_write_bytes(local, lambda f: f.write(data))
        if mtime_ns:
            os.utime(local, ns=(mtime_ns, mtime_ns))

    def delete(self, rel: str) -> None:
        fs, _ = self._fs
        path = self._path(rel)
        try:
            info = fs.get_file_info(path)
            import pyarrow.fs as pafs

            if info.type == pafs.FileType.Directory:
                fs.delete_dir(path)
            elif info.type == pafs.FileType.File:
                fs.delete_file(path)
        except FileNotFoundError:
            pass


_FILESYSTEMS: dict[str, tuple] = {}


def _open(uri: str):
    """pyarrow's filesystem and path for ``uri`` (one filesystem object per URI and process)."""
    if uri not in _FILESYSTEMS:
        import pyarrow.fs as pafs

        try:
            _FILESYSTEMS[uri] = pafs.FileSystem.from_uri(uri)
        except (ValueError, OSError) as e:
            raise UserError(f"--storage {uri}: {str(e).splitlines()[0]}") from None
    return _FILESYSTEMS[uri]


@dataclass(frozen=True)
class SweepFolder:
    """A sweep folder: ``local`` is where this process reads and writes; ``remote`` is its copy
    in a bucket (None when the storage is a folder every node mounts)."""

    local: Path
    remote: Bucket | None = None

    @property
    def where(self) -> str:
        """How the user named it (the URI or the path)."""
        return self.remote.uri if self.remote else str(self.local)

    def read_text(self, rel: str) -> str:
        """A file of the sweep, from the bucket when there is one (FileNotFoundError if none)."""
        if self.remote is None:
            return (self.local / rel).read_text(encoding="utf-8")
        data = self.remote.read_bytes(rel)
        if data is None:
            raise FileNotFoundError(f"{self.where}/{rel}")
        return data.decode()

    def exists(self, rel: str) -> bool:
        return self.remote.exists(rel) if self.remote else (self.local / rel).exists()

    def move(self, src: Path, dst: Path) -> None:
        """Move a folder of the sweep (in the bucket too: copied, then deleted)."""
        if self.remote is not None:
            old, new = (p.relative_to(self.local).as_posix() for p in (src, dst))
            for rel, _ in list(self.remote.files(old)):
                self.remote.copy(f"{old}/{rel}", f"{new}/{rel}")
            self.remote.delete(old)
        if src.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            src.rename(dst)

    def check_writable(self) -> None:
        """Refuse, in one line, a bucket this machine cannot write (missing, no credentials)."""
        if self.remote is None:
            return
        probe = f".write-probe-{os.getpid()}"
        try:
            self.remote.write_bytes(probe, b"")
            self.remote.delete(probe)
        except OSError as e:
            raise UserError(f"--storage {self.where}: cannot write there "
                            f"({str(e).strip().splitlines()[0]})") from None

    def push(self, *paths: Path) -> None:
        """Upload these files of the local copy (no-op without a bucket)."""
        if self.remote is None:
            return
        for path in paths:
            rel = path.relative_to(self.local).as_posix()
            if path.exists():
                self.remote.upload(path, rel)

    def write_json(self, path: Path, value) -> None:
        """layout.write_json, then upload the file."""
        layout.write_json(path, value)
        self.push(path)

    def remove_tree(self, rel: str) -> None:
        """Delete the folder ``rel`` of the sweep (in the bucket, or on the shared disk)."""
        if self.remote is not None:
            self.remote.delete(rel)
        else:
            shutil.rmtree(self.local / rel, ignore_errors=True)

    def unlink(self, path: Path) -> None:
        path.unlink(missing_ok=True)
        if self.remote is not None:
            self.remote.delete(path.relative_to(self.local).as_posix())

    def pull(self, *, under: str = "", only: tuple[str, ...] = ()) -> None:
        """Copy down what the bucket holds of the sweep's records and results (under ``under``;
        with ``only``, just the files of those names): all but Tune's and Train's own folders
        and the checkpoints. A local file with the object's size and time is its copy."""
        if self.remote is None:
            return
        from concurrent.futures import ThreadPoolExecutor

        listed = [(f"{under}/{rel}", size, mtime)
                  for rel, size, mtime in self.remote.stamped_files(under)] if under else [
            *self.remote.stamped_files("", recursive=False),
            *((f"{layout.TRIALS}/{rel}", size, mtime)
              for rel, size, mtime in self.remote.stamped_files(layout.TRIALS))]
        wanted = []
        for rel, size, mtime in listed:
            name = rel.rsplit("/", 1)[-1]
            if name.startswith(".") or rel.endswith(CHECKPOINT_SUFFIXES) or (
                    only and name not in only):
                continue
            local = self.local / rel
            st = local.stat() if local.is_file() else None
            if not (st and st.st_size == size and st.st_mtime_ns == mtime):
                wanted.append((rel, local, mtime))
        with ThreadPoolExecutor(PULL_THREADS) as pool:  # one request per file: in parallel
            list(pool.map(lambda w: self.remote.download(*w), wanted))

    def refresh(self, path: Path) -> None:
        """Replace the local copy of one file by the bucket's (removed when the bucket has
        none): for records another machine writes, e.g. driver.json."""
        if self.remote is None:
            return
        data = self.remote.read_bytes(path.relative_to(self.local).as_posix())
        if data is None:
            path.unlink(missing_ok=True)
        else:
            atomic_write_bytes(path, lambda f: f.write(data))


def open_sweep(where: str | Path) -> SweepFolder:
    """The sweep folder at a path or URI (its local copy is made when first written)."""
    if is_uri(where):
        uri = str(where).rstrip("/")
        _open(uri)  # a malformed URI is refused here, in one line
        return SweepFolder(mirror_dir(uri), Bucket(uri))
    return SweepFolder(Path(where).expanduser().resolve())


def read_sweep(where: str | Path) -> SweepFolder:
    """An existing sweep folder, its records and results copied down from the bucket."""
    folder = open_sweep(where)
    if folder.remote is not None:
        if not folder.remote.exists(layout.SPEC):
            raise UserError(f"{folder.where}: not a sweep folder (no {layout.SPEC})")
        folder.refresh(folder.local / layout.DRIVER)
        folder.pull()
    return folder
