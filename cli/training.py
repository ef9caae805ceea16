"""``smoothadv train`` (one trial without Ray, trainers.train) and ``pseudo-label`` (a
teacher's labels for self-training, trainers.self_training)."""

from __future__ import annotations

import argparse

from smoothadv.cli.shared import (
    add_data_root,
    add_device,
    add_no_progress,
    add_out,
    add_set,
    add_verb,
    one_writer,
)

TRAIN_EXAMPLES = (
    "smoothadv train trial.yaml --set sigma=0.5 --set certify.n=1000 -o runs/t1",
    "smoothadv train trial.yaml --set extra_data=pseudo.pkl --set extra_weight=1.0 -o runs/st"
    "  # self-training",
)
PSEUDO_LABEL_EXAMPLES = (
    "smoothadv pseudo-label runs/t1/checkpoint.pt --images cifar10:train -o pseudo.pkl",
    "smoothadv pseudo-label runs/t1/checkpoint.pt --images unlabelled.npy --limit 50000 "
    "--batch 512 -o pseudo.pkl",
)


def _add_train(sub) -> None:
    p = add_verb(sub, "train", help="train one trial without Ray",
                 description="Train one trial (resumes from OUT/checkpoint.pt).",
                 example=TRAIN_EXAMPLES)
    p.add_argument("config", help="YAML trial config")
    add_set(p, "override a config key (certify.n=1000 for the nested block)")
    add_out(p, "trial folder: checkpoint, metrics, config; an existing one is resumed")
    add_no_progress(p)
    p.set_defaults(func=_run_train)


def _add_pseudo_label(sub) -> None:
    p = add_verb(sub, "pseudo-label", help="label unlabelled images with a teacher model",
                 description="Write a pseudo-labelled set for self-training (Carmon et al. "
                 "2019; trial key extra_data): the teacher's base-classifier argmax on each "
                 "clean image.", example=PSEUDO_LABEL_EXAMPLES)
    p.add_argument("checkpoint", help="the teacher: a model checkpoint written by smoothadv")
    p.add_argument("--arch", help="the teacher's architecture (checked); a checkpoint's import "
                   "path module:name, which loading imports and runs, is used only when named "
                   "here: --arch module:name trusts that code")
    p.add_argument("--dataset", help="the teacher's dataset (checked); an import path "
                   "module:name is used only when named here, as --arch")
    p.add_argument("--images", required=True, metavar="SOURCE",
                   help="DATASET:SPLIT (e.g. cifar10:train; labels ignored), a .npy file "
                   "(uint8 N×H×W×C), or a pickle with 'data' (Carmon et al.'s format)")
    add_out(p, "output pickle: data, extrapolated_targets")
    p.add_argument("--limit", type=int, help="label only the first LIMIT images (default: all)")
    p.add_argument("--batch", type=int, default=256, help="images per forward pass")
    add_device(p)
    add_data_root(p, "folder holding the dataset files of --images DATASET:SPLIT")
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

    labels = pseudo_label(args.checkpoint, args.images, args.out, limit=args.limit,
                          data_root=args.data_root, batch_size=args.batch, device=args.device,
                          progress=not args.no_progress, arch=args.arch, dataset=args.dataset)
    counts = np.bincount(labels)
    shown = (" ".join(f"{c}:{n}" for c, n in enumerate(counts)) if len(counts) <= 20
             else f"{np.count_nonzero(counts)} classes, {counts.min()}..{counts.max()} each")
    print(f"{args.out}: {len(labels)} images, label counts {shown}")
    return 0
