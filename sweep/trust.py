"""Which files of a sweep folder this user's own drivers wrote: HMAC signatures with a key that
never leaves the user's config folder.

A sweep folder lives on a shared disk or in a bucket, so whoever can write it is not
necessarily the user resuming it. Two of its files would otherwise act for that user:

* **Tune's restore point** (``tune/``: ``tuner.pkl``, ``experiment_state-*.json`` and the
  searcher's state). ``Tuner.restore`` unpickles them, and an unpickled file runs any code it
  names. A driver signs each file Tune writes there (sweep.signing_callback, a Tune callback
  that runs when Tune has just saved its state, before the upload), and ``sweep resume`` hands
  Ray the folder only when every file in it carries a signature made with this user's key
  (:func:`verify_tune_state`); otherwise it refuses in one line naming the file.
* **The driver record** (``driver.json``): the pids ``sweep stop`` and ``sweep resume`` end.
  The driver signs it (:func:`signed`); an unsigned or altered record ends no process.

The key is 32 random bytes in ``signing.key`` (mode 0600) in ``$SMOOTHADV_CONFIG_DIR``, else
``$XDG_CONFIG_HOME/smoothadv``, else ``~/.config/smoothadv``, made on first use, as Jupyter signs
the notebooks its user wrote. Signatures live in the sweep's ``signatures.json``, per key (a
colleague who resumes the sweep adds their own after ``smoothadv sweep trust``), a few per file
(the latest ones Tune wrote, so a driver killed while uploading leaves a signed file).
Results, records and checkpoints are not signed: they are validated as they are read, and
checkpoints load with ``weights_only=True``, so they can change numbers but run no code.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import stat
from pathlib import Path
from typing import Any

from smoothadv.common import layout
from smoothadv.common.errors import UserError
from smoothadv.common.files import file_bytes
from smoothadv.common.records import read_object
from smoothadv.sweep.storage import SweepFolder

SIGNATURES = "signatures.json"
FORMAT_VERSION = 1
KEPT_PER_FILE = 8  # signatures kept per file: the newest Tune wrote, uploaded or not yet
MARKER = ".validate_storage_marker"  # Tune's empty probe file, never read


def key_path() -> Path:
    """The user's signing key file (see the module docstring)."""
    folder = os.environ.get("SMOOTHADV_CONFIG_DIR")
    if not folder:
        base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
        folder = Path(base) / "smoothadv"
    return Path(folder) / "signing.key"


def _key() -> bytes:
    """The user's key, made (0600, its folder 0700) when there is none yet."""
    path = key_path()
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    except OSError as e:
        raise UserError(f"{path}: cannot make the signing key ({e.strerror})") from None
    else:
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32) + "\n")
    try:
        mode = path.stat().st_mode
        text = path.read_text().strip()
    except OSError as e:
        raise UserError(f"{path}: cannot read the signing key ({e.strerror})") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise UserError(f"{path}: the signing key is readable by others (mode "
                        f"{stat.S_IMODE(mode):o}); chmod 600 it, or remove it to make a new one")
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) < 32:
        raise UserError(f"{path}: not a signing key (64 hex digits); remove it to make a new one")
    return key


def key_id(key: bytes) -> str:
    """A name for a key in signatures.json that says nothing about the key."""
    return hashlib.sha256(b"smoothadv key id\0" + key).hexdigest()[:16]


def _mac(key: bytes, what: str, data: bytes) -> str:
    return hmac.new(key, what.encode() + b"\0" + data, hashlib.sha256).hexdigest()


# ---------------------------------------------------------------- the driver record


def _record_bytes(record: dict[str, Any]) -> bytes:
    return json.dumps({k: v for k, v in record.items() if k != "mac"}, sort_keys=True).encode()


def signed(record: dict[str, Any]) -> dict[str, Any]:
    """The driver record with its format version and its ``mac``: this user's signature of
    every other key."""
    record = {"format_version": layout.RECORD_VERSION, **record}
    return {**record, "mac": _mac(_key(), layout.DRIVER, _record_bytes(record))}


def vouched(record: dict[str, Any] | None) -> bool:
    """Whether ``record`` (driver.json) was signed with this user's key and not changed."""
    if not isinstance(record, dict) or not isinstance(record.get("mac"), str):
        return False
    return hmac.compare_digest(record["mac"], _mac(_key(), layout.DRIVER, _record_bytes(record)))


# ---------------------------------------------------------------- Tune's restore point


def _tune_files(sweep: SweepFolder, tune_name: str) -> dict[str, bytes]:
    """Every file directly in the Tune experiment folder ``tune_name`` (what a restore reads),
    by its path in the sweep, with its content."""
    found: dict[str, bytes] = {}
    if sweep.remote is not None:
        for rel, _ in sweep.remote.files(tune_name):
            if "/" not in rel and rel != MARKER:
                data = sweep.remote.read_bytes(f"{tune_name}/{rel}")
                if data is not None:
                    found[f"{tune_name}/{rel}"] = data
        return found
    folder = sweep.local / tune_name
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        # a folder is a trial's; any other entry is read as a file or refused (a device, a
        # pipe or an oversized file named as one), never followed endlessly
        if path.name != MARKER and not path.is_dir():
            data = file_bytes(path)
            if data is not None:
                found[f"{tune_name}/{path.name}"] = data
    return found


def _read_signatures(sweep: SweepFolder) -> dict[str, Any]:
    """signatures.json (empty when there is none); any other content is one line."""
    path = sweep.local / SIGNATURES
    if sweep.remote is not None:
        sweep.refresh(path)
    fix = (f"remove it and run `smoothadv sweep trust {sweep.where}` after reading the "
           "sweep's tune/ folder")
    value = read_object(path, fix, version=FORMAT_VERSION)
    if value is None:
        return {"format_version": FORMAT_VERSION, "signers": {}}
    ok = (isinstance(value.get("signers"), dict)
          and all(isinstance(files, dict) and all(
              isinstance(macs, list) and all(isinstance(m, str) for m in macs)
              for macs in files.values()) for files in value["signers"].values()))
    if not ok:
        raise UserError(f"{path}: not a signatures record; {fix}")
    return value


class Signatures:
    """This user's signatures of a sweep's files, added to and saved by the driver."""

    def __init__(self, sweep: SweepFolder) -> None:
        self.sweep = sweep
        self.key = _key()
        self.record = _read_signatures(sweep)
        self.mine: dict[str, list[str]] = self.record["signers"].setdefault(
            key_id(self.key), {})

    def knows(self, rel: str, data: bytes) -> bool:
        return any(hmac.compare_digest(m, _mac(self.key, rel, data))
                   for m in self.mine.get(rel, []))

    def add(self, rel: str, data: bytes) -> bool:
        """Sign ``data`` as the content of ``rel``; False when it was signed already."""
        if self.knows(rel, data):
            return False
        self.mine[rel] = ([*self.mine.get(rel, []), _mac(self.key, rel, data)]
                          [-KEPT_PER_FILE:])
        return True

    def save(self) -> None:
        self.sweep.write_json(self.sweep.local / SIGNATURES, self.record)


def sign_tune_state(sweep: SweepFolder, tune_name: str) -> int:
    """Sign every file of the Tune experiment ``tune_name`` as it is now; returns how many
    were new."""
    signatures = Signatures(sweep)
    added = sum(signatures.add(rel, data)
                for rel, data in _tune_files(sweep, tune_name).items())
    if added:
        signatures.save()
    return added


def verify_tune_state(sweep: SweepFolder, tune_name: str) -> None:
    """Before Tune's restore point is handed to Ray: every file in it must carry this user's
    signature, else one UserError line naming the first that does not. A ``tuner.pkl`` with no
    experiment state beside it (a driver killed between making its Tuner and signing it) is
    removed instead: nothing ran yet, and the resume starts that experiment afresh."""
    files = _tune_files(sweep, tune_name)
    signatures = Signatures(sweep)
    unsigned = [rel for rel, data in files.items() if not signatures.knows(rel, data)]
    tuner = f"{tune_name}/tuner.pkl"
    if unsigned == [tuner] and not any("experiment_state" in rel for rel in files):
        if sweep.remote is not None:
            sweep.remote.delete(tuner)
        (sweep.local / tuner).unlink(missing_ok=True)
        return
    if unsigned:
        raise UserError(f"{sweep.where}/{unsigned[0]}: not signed by your smoothadv key, so it "
                        "is not handed to Ray (which unpickles it: it could run any code). "
                        "Either another user or program wrote it, or it changed after the "
                        "driver signed it. If you trust this sweep folder, read it and run "
                        f"`smoothadv sweep trust {sweep.where}`")


def trust(sweep: SweepFolder, tune_names: list[str]) -> int:
    """`smoothadv sweep trust`: sign the restore points as they are now (the user read them)."""
    return sum(sign_tune_state(sweep, name) for name in tune_names)
