"""Pieces more than one verb group uses: the arguments they share and ``--out``'s writer
lock."""

from __future__ import annotations

import argparse


def add_set(p: argparse.ArgumentParser, help: str) -> None:
    """``--set KEY=VALUE`` (repeatable): override a config or spec key."""
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=help)


def add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None, help="torch device (default: cuda if available)")


def add_no_progress(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def one_writer(out: str):
    """Hold ``--out``'s writer lock (common.writer_lock) while the block writes it: a second
    command writing the same output is refused in one line naming the first."""
    from pathlib import Path

    from smoothadv.common.writer_lock import exclusive, lock_path

    path = Path(out).expanduser().absolute()
    return exclusive(lock_path(path), f"--out {out}")
