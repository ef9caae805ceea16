"""Reading a file that is input: a regular file of bounded size, or one line saying why not."""

from __future__ import annotations

import stat
from pathlib import Path

from smoothadv.common.errors import UserError

MAX_RECORD_BYTES = 64 << 20  # far beyond any record or log smoothadv writes


def file_bytes(path: str | Path, limit: int = MAX_RECORD_BYTES) -> bytes | None:
    """The bytes of the regular file ``path``; None when it does not exist. A folder, a device
    or pipe, a file over ``limit`` bytes or an unreadable one is one UserError line naming it."""
    path = Path(path)
    try:
        info = path.stat()
        if stat.S_ISDIR(info.st_mode):
            raise UserError(f"{path}: is a folder, not a file")
        if not stat.S_ISREG(info.st_mode):
            raise UserError(f"{path}: not a regular file")
        if info.st_size > limit:
            raise UserError(f"{path}: {info.st_size:,} bytes, more than the {limit:,} such a "
                            "file may hold")
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise UserError(f"{path}: cannot read it ({e.strerror or type(e).__name__})") from None
