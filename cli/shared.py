"""Pieces more than one verb group uses: the help formatter (defaults and examples), the verb
parser built with them, the arguments verbs share and ``--out``'s writer lock."""

from __future__ import annotations

import argparse
from collections.abc import Sequence


class HelpFormatter(argparse.HelpFormatter):
    """``--help`` with every option's default, "(default: X)", unless its help already speaks
    of its default or it has none to say (None, a flag's False, a repeatable option's []); prose
    is wrapped, while lines indented by two spaces (the examples) are kept as written."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (not action.option_strings or action.required or "default" in text
                or default is None or default is False
                or default is argparse.SUPPRESS or (isinstance(default, list) and not default)):
            return action.help
        return f"{text} (default: %(default)s)"

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        parts: list[str] = []
        prose: list[str] = []

        def flush() -> None:
            if prose:
                parts.append(super(HelpFormatter, self)._fill_text(" ".join(prose), width,
                                                                   indent))
                prose.clear()

        for line in text.splitlines():
            if line.startswith("  ") or not line.strip():
                flush()
                parts.append(indent + line if line.strip() else "")
            else:
                prose.append(line.strip())
        flush()
        return "\n".join(parts)


def examples(*commands: str, intro: str = "") -> str:
    """An epilog: "Examples:" and one command line a line (a trailing "# …" comments it)."""
    return "\n".join([*([intro, ""] if intro else []), "Examples:",
                      *(f"  {c}" for c in commands)])


def add_verb(sub, name: str, *, help: str, description: str,
             example: Sequence[str]) -> argparse.ArgumentParser:
    """A verb's parser: its one-line ``help`` (the list of verbs), ``description`` and
    ``example`` command lines under "Examples:", every option's default shown."""
    return sub.add_parser(name, help=help, description=description,
                          epilog=examples(*example), formatter_class=HelpFormatter)


def add_out(p: argparse.ArgumentParser, help: str) -> None:
    """``-o/--out OUT`` (required): where a verb writes, the same spelling on every verb."""
    p.add_argument("-o", "--out", required=True, metavar="OUT", help=help)


def add_set(p: argparse.ArgumentParser, help: str) -> None:
    """``--set KEY=VALUE`` (repeatable): override a config or spec key."""
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help=f"{help}; repeatable")


def add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None,
                   help="torch device, e.g. cpu, cuda, cuda:1 (default: cuda if available)")


def add_data_root(p: argparse.ArgumentParser, help: str = "folder holding the dataset files"
                  ) -> None:
    p.add_argument("--data-root", help=f"{help} (default: $SMOOTHADV_DATA, $IMAGENET_DIR for "
                   "ImageNet, then ./data)")


def add_no_progress(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def one_writer(out: str):
    """Hold ``--out``'s writer lock (common.writer_lock) while the block writes it: a second
    command writing the same output is refused in one line naming the first."""
    from pathlib import Path

    from smoothadv.common.writer_lock import exclusive, lock_path

    path = Path(out).expanduser().absolute()
    return exclusive(lock_path(path), f"--out {out}")
