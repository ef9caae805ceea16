"""The ``smoothadv`` command line. Each sub-command's work lives in trainers/, certify/,
sweep/ or analysis/; this module only parses arguments and reports errors as one line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from trainers.errors import UserError


def _add_smoothing_args(p: argparse.ArgumentParser, certifying: bool) -> None:
    p.add_argument("checkpoint", help="model checkpoint written by smoothadv")
    p.add_argument("--sigma", type=float, required=True, help="noise level σ of the smoothing")
    p.add_argument("--dataset", help="dataset name (default: the checkpoint's)")
    p.add_argument("--data-root", help="folder holding the dataset files")
    p.add_argument("--split", default="test", choices=["train", "test"])
    p.add_argument("--download", action="store_true",
                   help="let torchvision download CIFAR-10 / Fashion-MNIST if missing")
    if certifying:
        p.add_argument("--n0", type=int, default=100, help="samples to choose the top class")
    p.add_argument("--n", type=int, default=100_000,
                   help="samples to estimate the class probability" if certifying
                   else "samples for the binomial test")
    p.add_argument("--alpha", type=float, default=0.001, help="failure probability")
    p.add_argument("--batch", type=int, default=400, help="noisy samples per forward pass")
    p.add_argument("--skip", type=int, default=1, help="use every SKIP-th image")
    p.add_argument("--max", type=int, default=-1, dest="max_index",
                   help="stop before this image index (-1: no limit; Cohen et al.'s meaning)")
    p.add_argument("--start", type=int, default=0, help="first image index of this shard")
    p.add_argument("--stop", type=int, default=None, help="image index this shard stops before")
    p.add_argument("--out", required=True, help="TSV output; an existing one is resumed")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available)")
    p.add_argument("--seed", type=int, default=0, help="noise seed (per image: seed, idx)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _run_smoothing(args: argparse.Namespace) -> int:
    from certify.runner import Sampling, smooth_checkpoint

    certifying = args.command == "certify"
    sampling = Sampling(sigma=args.sigma, n=args.n, alpha=args.alpha,
                        n0=args.n0 if certifying else None, seed=args.seed)
    results = smooth_checkpoint(
        args.checkpoint, sampling, args.out, dataset=args.dataset, data_root=args.data_root,
        split=args.split, skip=args.skip, max_index=args.max_index, start=args.start,
        stop=args.stop, batch_size=args.batch, device=args.device, download=args.download,
        progress=not args.no_progress,
    )
    _print_summary(results.path, certifying)
    return 0


def _print_summary(path, certifying: bool) -> None:
    import pandas as pd

    rows = pd.read_csv(path, sep="\t")
    if rows.empty:
        print(f"{path}: no images selected")
        return
    line = f"{path}: {len(rows)} images, accuracy {rows['correct'].mean():.3f}"
    if certifying:
        acr = (rows["radius"] * rows["correct"]).mean()
        abstained = (rows["predict"] < 0).mean()
        line += f", average certified radius {acr:.3f}, abstained {abstained:.3f}"
    print(line)


def _run_train(args: argparse.Namespace) -> int:
    from trainers.config import load_trial_config
    from trainers.train import train_trial

    config = load_trial_config(args.config, args.set)
    metrics = train_trial(config, args.out, progress=not args.no_progress)
    print(f"{args.out}: trained {metrics['epoch'] + 1} epochs, noisy test accuracy "
          f"{metrics['test_acc_noisy']:.3f}" if metrics else f"{args.out}: already trained")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="smoothadv",
        description="Train, certify and compare provably robust smoothed classifiers.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("certify", help="Cohen et al.'s CERTIFY on a dataset's images",
                       description="Certify images with CERTIFY (Cohen et al. 2019); resumable.")
    _add_smoothing_args(p, certifying=True)
    p.set_defaults(func=_run_smoothing)
    p = sub.add_parser("predict", help="Cohen et al.'s PREDICT on a dataset's images",
                       description="Classify images with PREDICT (Cohen et al. 2019); resumable.")
    _add_smoothing_args(p, certifying=False)
    p.set_defaults(func=_run_smoothing)
    p = sub.add_parser("train", help="train one trial without Ray",
                       description="Train one trial (resumes from OUT/checkpoint.pt).")
    p.add_argument("config", help="YAML trial config")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key (certify.n=1000 for the nested block)")
    p.add_argument("--out", required=True, help="trial folder: checkpoint, metrics, config")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=_run_train)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UserError as e:
        print(f"smoothadv: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("smoothadv: interrupted; finished rows and checkpoints are kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
