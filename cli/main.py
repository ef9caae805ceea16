"""``smoothadv``: the parser, built from each verb group's ``add_parsers``, and ``main``, which
runs a verb and reports its error as one line with its exit code."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from smoothadv.cli import analyze, smoothing, sweep, training
from smoothadv.cli.shared import HelpFormatter, examples
from smoothadv.common.errors import UserError

GROUPS = (smoothing, training, analyze, sweep)  # the order `smoothadv --help` lists them in
EXAMPLES = (
    "smoothadv sweep run quickstart --storage sweeps",
    "smoothadv analyze sweeps/quickstart -o sweeps/quickstart/report",
    "smoothadv train trial.yaml --set sigma=0.5 -o runs/t1",
    "smoothadv certify runs/t1/checkpoint.pt --sigma 0.5 --skip 20 -o certify.tsv",
)


def _version() -> str:
    from smoothadv.common.provenance import version

    return version()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="smoothadv",
        description="Train, certify and compare provably robust smoothed classifiers. Each "
        "COMMAND's --help lists its options, their defaults and examples.",
        epilog=examples(*EXAMPLES), formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"smoothadv {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in GROUPS:
        group.add_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UserError as e:
        print(f"smoothadv: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a full or read-only disk, a vanished mount
        where = f"{e.filename}: " if e.filename else ""
        print(f"smoothadv: error: {where}{e.strerror or e}; everything written before it is "
              "kept", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:
        print("smoothadv: interrupted; finished rows and checkpoints are kept", file=sys.stderr)
        return 143 if type(e).__name__ == "Terminated" else 130  # 128 + SIGTERM or SIGINT


if __name__ == "__main__":
    sys.exit(main())
