"""``smoothadv certify``, ``predict`` and ``attack``: a smoothed classifier on a dataset's
images (certify.runner, certify.attack), one TSV row per image, resumable."""

from __future__ import annotations

import argparse

from smoothadv.cli.shared import (
    add_data_root,
    add_device,
    add_no_progress,
    add_out,
    add_verb,
    one_writer,
)

CERTIFY_EXAMPLES = (
    "smoothadv certify runs/t1/checkpoint.pt --sigma 0.25 --skip 20 -o certify.tsv",
    "smoothadv certify model.pt --dataset cifar10 --sigma 0.25 --n0 100 --n 100000 "
    "--alpha 0.001 --batch 400 --skip 20 -o certify.tsv",
    "smoothadv certify model.pt --sigma 0.5 --sequential --target-radius 2.25 --precision bf16 "
    "--compile -o certify.tsv",
    "smoothadv certify model.pt --sigma 0.25 --skip 20 --start 0 --stop 5000 -o shard0.tsv"
    "  # one shard",
    "smoothadv certify checkpoint.pth.tar --input-layer normalize --sigma 0.25 --skip 20 "
    "-o cohen_0.25.tsv  # a released Cohen et al. model",
)
PREDICT_EXAMPLES = (
    "smoothadv predict model.pt --sigma 0.25 --n 100000 --alpha 0.001 --skip 20 -o predict.tsv",
    "smoothadv predict model.pt --sigma 0.25 --n 1000 --split train --max 1000 --device cpu "
    "-o predict_train.tsv",
)
ATTACK_EXAMPLES = (
    "smoothadv attack model.pt --sigma 0.25 --epsilon 0.25 0.5 1.0 --steps 20 --m-test 128 "
    "--n 1000 --skip 20 -o attack.tsv",
    "smoothadv attack model.pt --sigma 0.5 --epsilon 0.5 --precision bf16 --compile "
    "-o attack.tsv",
)


def _add_model_args(p: argparse.ArgumentParser) -> None:
    """The checkpoint, its noise level and the images it is evaluated on."""
    p.add_argument("checkpoint", help="model checkpoint written by smoothadv, or a released "
                   "Cohen et al./SmoothAdv one (with --input-layer)")
    p.add_argument("--sigma", type=float, required=True, help="noise level σ of the smoothing")
    p.add_argument("--dataset", help="dataset name (default: the checkpoint's); naming the "
                   "checkpoint's own import path module:name trusts that code (a checkpoint's "
                   "import path is used only when named)")
    p.add_argument("--arch", help="the checkpoint's architecture (checked); a checkpoint's "
                   "import path module:name, which loading imports and runs, is used only when "
                   "named here: --arch module:name trusts that code")
    add_data_root(p)
    p.add_argument("--split", default="test", choices=["train", "test"],
                   help="the dataset split whose images are evaluated")
    p.add_argument("--download", action="store_true",
                   help="let torchvision download CIFAR-10/100, SVHN, MNIST or Fashion-MNIST "
                   "if missing")


def _add_certify_args(p: argparse.ArgumentParser) -> None:
    """CERTIFY's own: the selection samples and sequential sampling."""
    p.add_argument("--n0", type=int, default=100, help="samples to choose the top class")
    p.add_argument("--sequential", action="store_true",
                   help="draw the n samples in stages and stop an image early when its "
                   "top class is not its label or abstention is certain (adds the column "
                   "samples; see docs/guide/certify.md)")
    p.add_argument("--target-radius", type=float, metavar="R",
                   help="with --sequential, also stop once the certified radius reaches R "
                   "(α is then split over the looks)")


def _add_sampling_args(p: argparse.ArgumentParser, certifying: bool) -> None:
    """The samples, the failure probability and the batching."""
    p.add_argument("--n", type=int, default=100_000,
                   help="samples to estimate the class probability" if certifying
                   else "samples for the binomial test")
    p.add_argument("--alpha", type=float, default=0.001, help="failure probability")
    p.add_argument("--batch", type=int, default=None,
                   help="noisy samples per forward pass (default: 400 on the CPU, 4096 on CUDA, "
                   "halved while a batch runs out of GPU memory)")


def _add_range_args(p: argparse.ArgumentParser) -> None:
    """Which images: every SKIP-th, before MAX, in this shard's [START, STOP)."""
    p.add_argument("--skip", type=int, default=1, help="use every SKIP-th image")
    p.add_argument("--max", type=int, default=-1, dest="max_index",
                   help="stop before this image index; -1: no limit (Cohen et al.'s meaning)")
    p.add_argument("--start", type=int, default=0, help="first image index of this shard")
    p.add_argument("--stop", type=int, default=None,
                   help="image index this shard stops before (default: the end of the split)")


def _add_output_args(p: argparse.ArgumentParser) -> None:
    """The output, the device, the seed, a released checkpoint's input layer and TF32."""
    add_out(p, "TSV output (settings in OUT.meta.json); an existing one is resumed")
    add_device(p)
    p.add_argument("--seed", type=int, default=0, help="noise seed (per image: seed, idx)")
    p.add_argument("--input-layer", choices=["normalize", "center"],
                   help="a released checkpoint's input layer: normalize ((x-mean)/std) or "
                   "center (x-mean); required for those, refused for smoothadv's own "
                   "(docs/guide/certify.md)")
    p.add_argument("--allow-tf32", action="store_true",
                   help="on CUDA, let matmuls and convolutions use TF32 (default: full float32; "
                   "the precision is recorded in OUT.meta.json)")


def _add_kernel_args(p: argparse.ArgumentParser) -> None:
    """--precision and --compile (certify, predict and attack alike)."""
    p.add_argument("--precision", choices=["float32", "tf32", "bf16"],
                   help="float32, tf32 (as --allow-tf32) or bf16 (the base classifier under "
                   "bfloat16 autocast, on CPU too; its class counts may differ slightly from "
                   "float32's); recorded in OUT.meta.json (default: float32, tf32 with "
                   "--allow-tf32)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="run the base classifier's forward passes through torch.compile "
                   "(attack: PREDICT's, the PGD steps stay eager; falls back to eager with a "
                   "one-line notice when no compiler works; recorded in OUT.meta.json as "
                   "compiled: true/false). Default: compile where it repays itself: a model of "
                   "≥ 20 MFLOP a sample (ResNet-20, not LeNet) in a run of ≥ 5e12 FLOPs on CPU "
                   "(ResNet-20: one image at n = 100,000) or 5e15 on CUDA; a resumed OUT keeps "
                   "its choice")


def _add_smoothing_args(p: argparse.ArgumentParser, certifying: bool) -> None:
    """The arguments of certify, predict and attack."""
    _add_model_args(p)
    if certifying:
        _add_certify_args(p)
    _add_sampling_args(p, certifying)
    _add_range_args(p)
    _add_output_args(p)
    _add_kernel_args(p)
    add_no_progress(p)


def _add_attack_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--epsilon", type=float, nargs="+", required=True,
                   help="ℓ2 attack radii in [0,1] pixel units, e.g. 0.25 0.5 1.0")
    p.add_argument("--steps", type=int, default=20, help="PGD steps (step size 2ε/steps)")
    p.add_argument("--m-test", type=int, default=128,
                   help="noise samples in the attack's objective, drawn once per image and ε")


def add_parsers(sub) -> None:
    """certify, predict and attack."""
    p = add_verb(sub, "certify", help="Cohen et al.'s CERTIFY on a dataset's images",
                 description="Certify images with CERTIFY (Cohen et al. 2019); resumable.",
                 example=CERTIFY_EXAMPLES)
    _add_smoothing_args(p, certifying=True)
    p.set_defaults(func=_run_smoothing)
    p = add_verb(sub, "predict", help="Cohen et al.'s PREDICT on a dataset's images",
                 description="Classify images with PREDICT (Cohen et al. 2019); resumable.",
                 example=PREDICT_EXAMPLES)
    _add_smoothing_args(p, certifying=False)
    p.set_defaults(func=_run_smoothing)
    p = add_verb(sub, "attack", help="SmoothAdv-PGD attack, then PREDICT (empirical accuracy)",
                 description="Attack images with SmoothAdv-PGD (Salman et al. 2019, Section "
                 "4.3) at each ε and classify them with PREDICT; resumable.",
                 example=ATTACK_EXAMPLES)
    _add_smoothing_args(p, certifying=False)
    _add_attack_args(p)
    p.set_defaults(func=_run_attack)


def _evaluation_args(args: argparse.Namespace) -> dict:
    """What certify, predict and attack pass alike to certify.runner: the model, the images
    (dataset, split, skip/max/start/stop), batching, device and input layer."""
    return dict(arch=args.arch, dataset=args.dataset, data_root=args.data_root,
                split=args.split, skip=args.skip, max_index=args.max_index, start=args.start,
                stop=args.stop, batch_size=args.batch, device=args.device,
                download=args.download, progress=not args.no_progress,
                input_layer=args.input_layer, allow_tf32=args.allow_tf32)


def _run_smoothing(args: argparse.Namespace) -> int:
    from smoothadv.certify.runner import smooth_checkpoint
    from smoothadv.common.settings import Sampling

    certifying = args.command == "certify"
    sampling = Sampling(sigma=args.sigma, n=args.n, alpha=args.alpha,
                        n0=args.n0 if certifying else None, seed=args.seed,
                        sequential=certifying and args.sequential,
                        target_radius=args.target_radius if certifying else None).validate()
    with one_writer(args.out):  # settings checked first: a refusal leaves not even the lock
        results = smooth_checkpoint(args.checkpoint, sampling, args.out,
                                    **_evaluation_args(args), precision=args.precision,
                                    compile=args.compile)
    print_summary(results.path, certifying)
    return 0


def print_summary(path, certifying: bool) -> None:
    """One line: the images, their accuracy and, when ``certifying``, the average certified
    radius and the abstention rate."""
    import pandas as pd
    from smoothadv.common.metrics import accuracy, certified_summary, right_rows

    rows = pd.read_csv(path, sep="\t")
    if rows.empty:
        print(f"{path}: no images selected")
        return
    line = f"{path}: {len(rows)} images, accuracy {accuracy(right_rows(rows)):.3f}"
    if certifying:
        summary = certified_summary(rows, radii=())
        line += (f", average certified radius {summary['acr']:.3f}, "
                 f"abstained {summary['abstain']:.3f}")
    print(line)


def _run_attack(args: argparse.Namespace) -> int:
    import pandas as pd
    from smoothadv.certify.attack import attack_checkpoint
    from smoothadv.common.metrics import empirical_accuracy
    from smoothadv.common.settings import AttackSettings

    settings = AttackSettings(sigma=args.sigma, epsilons=tuple(args.epsilon), steps=args.steps,
                              m_test=args.m_test, n=args.n, alpha=args.alpha,
                              seed=args.seed).validate()
    with one_writer(args.out):  # settings checked first: a refusal leaves not even the lock
        results = attack_checkpoint(args.checkpoint, settings, args.out,
                                    **_evaluation_args(args), precision=args.precision,
                                    compile=args.compile)
    accuracy = empirical_accuracy(pd.read_csv(results.path, sep="\t"))
    if accuracy.empty:
        print(f"{results.path}: no images selected")
    for epsilon, row in accuracy.iterrows():
        print(f"eps {epsilon:g}: empirical accuracy {row['accuracy']:.3f} "
              f"({int(row['images'])} images)")
    return 0
