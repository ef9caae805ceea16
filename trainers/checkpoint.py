"""Checkpoints that carry everything needed to rebuild a model and resume its training.

Written atomically (temporary file in the same folder, fsync, rename, fsync of the folder) and
read with ``torch.load(weights_only=True)``: a checkpoint can never run code when loaded.
Its ``arch`` and ``dataset`` may be import paths ``module:name`` (trainers.registry), whose
import and call would run code: :func:`model_from_checkpoint` uses such a path only when the
caller names the same path itself (a trial's config, a command line's ``--arch``/``--dataset``)
and otherwise refuses the file before importing anything.

Each checkpoint carries its ``format_version`` (:data:`FORMAT_VERSION`; a file of another
version is refused in one line naming it and both versions) and a SHA-256 digest of its own
content (every tensor's bytes, dtype and shape, and every other value, key by key): a flipped
bit inside the weights, which ``torch.load`` reads without complaint, is caught on load as a
corrupt file, and a file without a digest is refused.

No generator state is stored: training draws each epoch's randomness from generators
seeded by (seed, epoch) (trainers.train.epoch_seed), so a resumed run needs none.
"""

from __future__ import annotations

import hashlib
import pickle
import re
import warnings
from collections.abc import Collection
from pathlib import Path
from typing import Any

import torch
from smoothadv.common.atomic import atomic_write_bytes
from smoothadv.common.errors import UserError
from smoothadv.common.layout import PREVIOUS
from smoothadv.common.records import check_version
from smoothadv.trainers.datasets import dataset_info
from smoothadv.trainers.models import build_model, place
from smoothadv.trainers.registry import is_import_path
from torch import nn

FORMAT_VERSION = 1
REQUIRED_KEYS = ("format_version", "arch", "dataset", "num_classes", "mean", "std", "state_dict")
DIGEST_KEY = "sha256"


def payload_digest(payload: dict[str, Any]) -> str:
    """SHA-256 over a checkpoint's content but its own digest: tensors by dtype, shape and
    bytes, containers key by key (sorted), any other value by its repr (floats round-trip)."""
    h = hashlib.sha256()

    def feed(value: Any) -> None:
        if isinstance(value, torch.Tensor):
            t = value.detach().cpu().contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)}:".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy())
        elif isinstance(value, dict):
            h.update(f"D{len(value)}:".encode())
            for key in sorted(value, key=repr):
                feed(key)
                feed(value[key])
        elif isinstance(value, list | tuple):
            h.update(f"L{len(value)}:".encode())
            for item in value:
                feed(item)
        else:
            h.update(f"{type(value).__name__}:{value!r};".encode())

    feed({k: v for k, v in payload.items() if k != DIGEST_KEY})
    return h.hexdigest()


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    *,
    arch: str,
    dataset: str,
    config: dict[str, Any] | None = None,
    epoch: int = 0,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    extra: dict[str, Any] | None = None,
    keep_previous: bool = False,
) -> None:
    """Atomically write a checkpoint of ``model`` (unwrapped from DDP) and its training state;
    ``keep_previous`` keeps the replaced one at :func:`previous_path` as a fallback."""
    info = dataset_info(dataset)
    model = getattr(model, "module", model)
    normalize = model[0]
    payload = {
        "format_version": FORMAT_VERSION,
        "arch": arch,
        "dataset": dataset,
        "num_classes": info.num_classes,
        "input_shape": list(info.input_shape),
        "mean": normalize.mean.flatten().tolist(),
        "std": normalize.std.flatten().tolist(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "config": dict(config or {}),
        "epoch": epoch,
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        **(extra or {}),
    }
    payload[DIGEST_KEY] = payload_digest(payload)
    atomic_write_bytes(path, lambda f: torch.save(payload, f),
                       keep_previous=previous_path(path) if keep_previous else None)


class CheckpointMismatch(UserError):
    """A readable checkpoint that is not the one asked for: of another format version,
    architecture or dataset (a wrong file, not a damaged one)."""


def previous_path(path: str | Path) -> Path:
    """Where save_checkpoint(keep_previous=True) keeps the checkpoint it replaced."""
    path = Path(path)
    return path.with_name(f"{path.stem}{PREVIOUS}{path.suffix}")


_ZIP_MAGIC = b"PK\x03\x04"  # what torch.save writes (a zip archive) starts with
_CODE_GLOBAL = re.compile(r"\bGLOBAL ([\w.]+)")  # torch names the callable a pickle asks for


def read_weights_file(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``; any problem is one UserError line naming the
    file: a file that is no checkpoint (whatever bytes it holds), a truncated or corrupt one,
    or one that would need code to load (a pickle of other objects than weights)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint file does not exist")
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": one line only
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except MemoryError:
        raise
    except pickle.UnpicklingError as e:
        # torch's message advises loading with weights_only=False, which would run the
        # file's code: never repeat it. Name what the file asks to run, if it says.
        needs = _CODE_GLOBAL.search(str(e))
        if needs:
            raise UserError(f"{path}: refused: not a plain weights checkpoint, loading it would "
                            f"need to run code ({needs[1].rstrip('.')})") from None
        raise UserError(f"{path}: not a checkpoint (not a file torch.save writes: "
                        "unreadable as plain weights)") from None
    except Exception as e:  # whatever torch.load raises on arbitrary bytes
        if _starts_with(path, _ZIP_MAGIC):
            raise UserError(f"{path}: checkpoint is truncated or corrupt "
                            f"({type(e).__name__})") from None
        raise UserError(f"{path}: not a checkpoint (not a file torch.save writes; "
                        f"{type(e).__name__} reading it)") from None
    return ckpt


def _starts_with(path: Path, prefix: bytes) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(len(prefix)) == prefix
    except OSError:
        return False


def is_smoothadv_checkpoint(payload: Any) -> bool:
    """Whether a loaded file holds every key :func:`save_checkpoint` writes and readers need."""
    return isinstance(payload, dict) and all(k in payload for k in REQUIRED_KEYS)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``; any problem is a UserError naming the file."""
    ckpt = read_weights_file(path, map_location)
    if not is_smoothadv_checkpoint(ckpt):
        raise UserError(f"{path}: not a smoothadv checkpoint (missing {', '.join(REQUIRED_KEYS)})")
    return verified(path, ckpt)


def verified(path: str | Path, ckpt: dict[str, Any]) -> dict[str, Any]:
    """``ckpt`` (read from ``path``) if it is of :data:`FORMAT_VERSION` (else a
    CheckpointMismatch naming both versions) and its content matches its digest (else a
    UserError calling the file corrupt, or, without a digest, no smoothadv checkpoint)."""
    try:
        check_version(path, ckpt.get("format_version"), FORMAT_VERSION)
    except UserError as e:
        raise CheckpointMismatch(str(e)) from None
    if DIGEST_KEY not in ckpt:
        raise UserError(f"{path}: not a smoothadv checkpoint (no {DIGEST_KEY}, the SHA-256 "
                        "digest of its content)")
    if payload_digest(ckpt) != ckpt[DIGEST_KEY]:
        raise UserError(f"{path}: checkpoint is truncated or corrupt (its content does not "
                        "match the SHA-256 digest stored in it)")
    return ckpt


TRUST_HINT = "name it yourself to trust it: --{key} {value}"


def check_trusted(path: str | Path, ckpt: dict[str, Any], trust: Collection[str | None] = (),
                  hint: str = TRUST_HINT) -> None:
    """Refuse ``ckpt`` (read from ``path``) whose ``arch`` or ``dataset`` is not a name, or is
    an import path ``module:name`` that ``trust`` (the names the user gave) does not hold:
    one line ending in ``hint`` (formatted with ``key`` and ``value``), before anything is
    imported."""
    _check_names(path, ckpt)
    for key in ("arch", "dataset"):
        value = ckpt[key]
        if is_import_path(value) and value not in trust:
            raise UserError(f"{path}: its {key} {value!r} is an import path, which would run "
                            f"that code; {hint.format(key=key, value=value)}")


def _check_names(path: str | Path, ckpt: dict[str, Any]) -> None:
    for key in ("arch", "dataset"):
        value = ckpt[key]
        if not isinstance(value, str) or not value:
            raise UserError(f"{path}: not a smoothadv checkpoint ({key} is a "
                            f"{type(value).__name__}, not a name)")


def model_from_checkpoint(
    path: str | Path,
    *,
    arch: str | None = None,
    dataset: str | None = None,
    device: str | torch.device = "cpu",
    ckpt: dict[str, Any] | None = None,
    trust: Collection[str | None] = (),
    trust_hint: str = TRUST_HINT,
) -> tuple[nn.Sequential, dict[str, Any]]:
    """Rebuild the model stored in ``path``; ``arch``/``dataset``, when given, must match it.
    ``ckpt``, when given, is the file's content already read by :func:`load_checkpoint`.

    An ``arch`` or ``dataset`` that the file records as an import path ``module:name`` is
    imported only when the caller names it: as ``arch``/``dataset`` or in ``trust`` (e.g. a
    dataset to evaluate on); otherwise the file is refused (one line, ending in
    ``trust_hint``: how the user names it) before any import."""
    ckpt = load_checkpoint(path) if ckpt is None else verified(path, ckpt)
    _check_names(path, ckpt)
    for key, want in (("arch", arch), ("dataset", dataset)):
        if want is not None and ckpt[key] != want:
            raise CheckpointMismatch(f"{path}: checkpoint {key} is {ckpt[key]!r}, "
                                     f"expected {want!r}")
    check_trusted(path, ckpt, {arch, dataset, *trust}, trust_hint)
    if not isinstance(ckpt["state_dict"], dict):
        raise UserError(f"{path}: not a smoothadv checkpoint (its state_dict is a "
                        f"{type(ckpt['state_dict']).__name__}, not a mapping)")
    try:
        model = build_model(ckpt["arch"], ckpt["dataset"])
    except UserError as e:
        raise UserError(f"{path}: {e}") from e
    try:
        model.load_state_dict(ckpt["state_dict"])
    except (RuntimeError, TypeError, AttributeError, ValueError, KeyError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"{path}: weights do not fit arch {ckpt['arch']!r} ({first})") from e
    return place(model, device), ckpt
