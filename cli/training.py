"""``smoothadv train`` (one trial without Ray, trainers.train) and ``pseudo-label`` (a
teacher's labels for self-training, trainers.self_training)."""

from __future__ import annotations

import argparse

from smoothadv.cli.shared import add_device, add_no_progress, add_set, one_writer


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train one trial without Ray",
                       description="Train one trial (resumes from OUT/checkpoint.pt).")
    p.add_argument("config", help="YAML trial config")
    add_set(p, "override a config key (certify.n=1000 for the nested block)")
    p.add_argument("--out", required=True, help="trial folder: checkpoint, metrics, config")
    add_no_progress(p)
    p.set_defaults(func=_run_train)


def _add_pseudo_label(sub) -> None:
    p = sub.add_parser("pseudo-label", help="label unlabelled images with a teacher model",
                       description="Write a pseudo-labelled set for self-training (Carmon et "
                       "al. 2019; trial key extra_data): the teacher's base-classifier argmax "
                       "on each clean image.")
    p.add_argument("--teacher", required=True, help="model checkpoint written by smoothadv")
    p.add_argument("--arch", help="the teacher's architecture (checked); a checkpoint's import "
                   "path module:name, which loading imports and runs, is used only when named "
                   "here: --arch module:name trusts that code")
    p.add_argument("--dataset", help="the teacher's dataset (checked); an import path "
                   "module:name is used only when named here, as --arch")
    p.add_argument("--images", required=True, metavar="SOURCE",
                   help="DATASET:SPLIT (e.g. cifar10:train; labels ignored), a .npy file "
                   "(uint8 N×H×W×C), or a pickle with 'data' (Carmon et al.'s format)")
    p.add_argument("--out", required=True, help="output pickle: data, extrapolated_targets")
    p.add_argument("--limit", type=int, help="label only the first LIMIT images")
    p.add_argument("--batch", type=int, default=256, help="images per forward pass")
    add_device(p)
    p.add_argument("--data-root", help="folder holding the dataset files (DATASET:SPLIT)")
    add_no_progress(p)
    p.set_defaults(func=_run_pseudo_label)


def add_parsers(sub) -> None:
    """train and pseudo-label."""
    _add_train(sub)
    _add_pseudo_label(sub)


def _run_train(args: argparse.Namespace) -> int:
    from smoothadv.trainers.config import load_trial_config
    from smoothadv.trainers.train import train_trial

    config = load_trial_config(args.config, args.set)
    with one_writer(args.out):
        metrics = train_trial(config, args.out, progress=not args.no_progress)
    print(f"{args.out}: trained {metrics['epoch'] + 1} epochs, noisy test accuracy "
          f"{metrics['test_acc_noisy']:.3f}" if metrics else f"{args.out}: already trained")
    return 0


def _run_pseudo_label(args: argparse.Namespace) -> int:
    import numpy as np
    from smoothadv.trainers.self_training import pseudo_label

    labels = pseudo_label(args.teacher, args.images, args.out, limit=args.limit,
                          data_root=args.data_root, batch_size=args.batch, device=args.device,
                          progress=not args.no_progress, arch=args.arch, dataset=args.dataset)
    counts = np.bincount(labels)
    shown = (" ".join(f"{c}:{n}" for c, n in enumerate(counts)) if len(counts) <= 20
             else f"{np.count_nonzero(counts)} classes, {counts.min()}..{counts.max()} each")
    print(f"{args.out}: {len(labels)} images, label counts {shown}")
    return 0
