"""The ``smoothadv`` command line. Each sub-command's work lives in trainers/, certify/,
sweep/ or analysis/; this module only parses arguments and reports errors as one line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from common.errors import UserError


def _add_smoothing_args(p: argparse.ArgumentParser, certifying: bool,
                        kernels: bool = True) -> None:
    """The arguments of certify, predict and attack; ``kernels``: also --precision and
    --compile (certify and predict)."""
    p.add_argument("checkpoint", help="model checkpoint written by smoothadv, or a released "
                   "Cohen et al./SmoothAdv one (with --input-layer)")
    p.add_argument("--sigma", type=float, required=True, help="noise level σ of the smoothing")
    p.add_argument("--dataset", help="dataset name (default: the checkpoint's); naming the "
                   "checkpoint's own import path module:name trusts that code (a checkpoint's "
                   "import path is used only when named)")
    p.add_argument("--arch", help="the checkpoint's architecture (checked); a checkpoint's "
                   "import path module:name, which loading imports and runs, is used only when "
                   "named here: --arch module:name trusts that code")
    p.add_argument("--data-root", help="folder holding the dataset files")
    p.add_argument("--split", default="test", choices=["train", "test"])
    p.add_argument("--download", action="store_true",
                   help="let torchvision download CIFAR-10/100, SVHN, MNIST or Fashion-MNIST "
                   "if missing")
    if certifying:
        p.add_argument("--n0", type=int, default=100, help="samples to choose the top class")
        p.add_argument("--sequential", action="store_true",
                       help="draw the n samples in stages and stop an image early when its "
                       "top class is not its label or abstention is certain (adds the column "
                       "samples; see README)")
        p.add_argument("--target-radius", type=float, metavar="R",
                       help="with --sequential, also stop once the certified radius reaches R "
                       "(α is then split over the looks)")
    p.add_argument("--n", type=int, default=100_000,
                   help="samples to estimate the class probability" if certifying
                   else "samples for the binomial test (default: %(default)s)")
    p.add_argument("--alpha", type=float, default=0.001, help="failure probability")
    p.add_argument("--batch", type=int, default=None,
                   help="noisy samples per forward pass (default: 400 on the CPU, 4096 on CUDA, "
                   "halved while a batch runs out of GPU memory)")
    p.add_argument("--skip", type=int, default=1, help="use every SKIP-th image")
    p.add_argument("--max", type=int, default=-1, dest="max_index",
                   help="stop before this image index (-1: no limit; Cohen et al.'s meaning)")
    p.add_argument("--start", type=int, default=0, help="first image index of this shard")
    p.add_argument("--stop", type=int, default=None, help="image index this shard stops before")
    p.add_argument("--out", required=True, help="TSV output; an existing one is resumed")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available)")
    p.add_argument("--seed", type=int, default=0, help="noise seed (per image: seed, idx)")
    p.add_argument("--input-layer", choices=["normalize", "center"],
                   help="a released checkpoint's input layer: normalize ((x-mean)/std) or "
                   "center (x-mean); see README")
    p.add_argument("--allow-tf32", action="store_true",
                   help="on CUDA, let matmuls and convolutions use TF32 (default: full float32; "
                   "the precision is recorded in OUT.meta.json)")
    if kernels:
        p.add_argument("--precision", choices=["float32", "tf32", "bf16"],
                       help="float32 (default), tf32 (as --allow-tf32) or bf16 (the base "
                       "classifier under bfloat16 autocast, on CPU too; its class counts may "
                       "differ slightly from float32's); recorded in OUT.meta.json")
        p.add_argument("--compile", action="store_true",
                       help="run the base classifier through torch.compile (falls back to eager "
                       "with a one-line notice when no compiler works; recorded in "
                       "OUT.meta.json as compiled: true/false)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def one_writer(out: str):
    """Hold ``--out``'s writer lock (common.writer_lock) while the block writes it: a second
    command writing the same output is refused in one line naming the first."""
    from pathlib import Path

    from common.writer_lock import exclusive, lock_path

    path = Path(out).expanduser().absolute()
    return exclusive(lock_path(path), f"--out {out}")


def _evaluation_args(args: argparse.Namespace) -> dict:
    """What certify, predict and attack pass alike to certify.runner: the model, the images
    (dataset, split, skip/max/start/stop), batching, device and input layer."""
    return dict(arch=args.arch, dataset=args.dataset, data_root=args.data_root,
                split=args.split, skip=args.skip, max_index=args.max_index, start=args.start,
                stop=args.stop, batch_size=args.batch, device=args.device,
                download=args.download, progress=not args.no_progress,
                input_layer=args.input_layer, allow_tf32=args.allow_tf32)


def _run_smoothing(args: argparse.Namespace) -> int:
    from certify.runner import smooth_checkpoint
    from certify.settings import Sampling

    certifying = args.command == "certify"
    sampling = Sampling(sigma=args.sigma, n=args.n, alpha=args.alpha,
                        n0=args.n0 if certifying else None, seed=args.seed,
                        sequential=certifying and args.sequential,
                        target_radius=args.target_radius if certifying else None).validate()
    with one_writer(args.out):  # settings checked first: a refusal leaves not even the lock
        results = smooth_checkpoint(args.checkpoint, sampling, args.out,
                                    **_evaluation_args(args), precision=args.precision,
                                    compile=args.compile)
    _print_summary(results.path, certifying)
    return 0


def _print_summary(path, certifying: bool) -> None:
    import pandas as pd

    from common.metrics import accuracy, certified_summary, right_rows

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

    from certify.attack import attack_checkpoint
    from certify.settings import AttackSettings
    from common.metrics import empirical_accuracy

    settings = AttackSettings(sigma=args.sigma, epsilons=tuple(args.epsilon), steps=args.steps,
                              m_test=args.m_test, n=args.n, alpha=args.alpha,
                              seed=args.seed).validate()
    with one_writer(args.out):  # settings checked first: a refusal leaves not even the lock
        results = attack_checkpoint(args.checkpoint, settings, args.out,
                                    **_evaluation_args(args))
    accuracy = empirical_accuracy(pd.read_csv(results.path, sep="\t"))
    if accuracy.empty:
        print(f"{results.path}: no images selected")
    for epsilon, row in accuracy.iterrows():
        print(f"eps {epsilon:g}: empirical accuracy {row['accuracy']:.3f} "
              f"({int(row['images'])} images)")
    return 0


def _run_train(args: argparse.Namespace) -> int:
    from trainers.config import load_trial_config
    from trainers.train import train_trial

    config = load_trial_config(args.config, args.set)
    with one_writer(args.out):
        metrics = train_trial(config, args.out, progress=not args.no_progress)
    print(f"{args.out}: trained {metrics['epoch'] + 1} epochs, noisy test accuracy "
          f"{metrics['test_acc_noisy']:.3f}" if metrics else f"{args.out}: already trained")
    return 0


def _run_pseudo_label(args: argparse.Namespace) -> int:
    import numpy as np

    from trainers.self_training import pseudo_label

    labels = pseudo_label(args.teacher, args.images, args.out, limit=args.limit,
                          data_root=args.data_root, batch_size=args.batch, device=args.device,
                          progress=not args.no_progress, arch=args.arch, dataset=args.dataset)
    counts = np.bincount(labels)
    shown = (" ".join(f"{c}:{n}" for c, n in enumerate(counts)) if len(counts) <= 20
             else f"{np.count_nonzero(counts)} classes, {counts.min()}..{counts.max()} each")
    print(f"{args.out}: {len(labels)} images, label counts {shown}")
    return 0


def _run_analyze(args: argparse.Namespace) -> int:
    from analysis.published import parse_references
    from analysis.report import Options, build_report

    options = Options(radii=tuple(args.radii), selection=args.selection,
                      references=parse_references(args.reference),
                      representative=tuple(args.representative), rho=args.rho,
                      include_incomplete=args.include_incomplete)
    from sweep.storage import read_sweep

    # a sweep in a bucket is read from this machine's copy of its records and results
    sweep_dirs = [str(read_sweep(d).local) if "://" in d else d for d in args.sweep_dirs]
    report = build_report(sweep_dirs, args.logs, args.out, options)
    print("\n".join(report.summary))
    return 0


def _run_sweep_plan(args: argparse.Namespace) -> int:
    from sweep.spec import load_spec
    from sweep.status import format_plan

    print(format_plan(load_spec(args.spec, args.set, args.max_trials)))
    return 0


def _run_sweep_run(args: argparse.Namespace) -> int:
    from sweep.run import run_sweep

    errors = run_sweep(args.spec, args.set, max_trials=args.max_trials,
                       address=args.address, storage=args.storage,
                       max_concurrent=args.max_concurrent, verbose=args.verbose,
                       dashboard=args.dashboard, log_to=args.log_to)
    return 1 if errors else 0


def _run_sweep_resume(args: argparse.Namespace) -> int:
    from sweep.run import resume_sweep

    errors = resume_sweep(args.sweep_dir, restart_errored=args.restart_errored,
                          address=args.address, max_concurrent=args.max_concurrent,
                          verbose=args.verbose, dashboard=args.dashboard,
                          log_to=args.log_to)
    return 1 if errors else 0


def _run_sweep_stop(args: argparse.Namespace) -> int:
    from sweep.run import stop_sweep

    stop_sweep(args.sweep_dir)
    return 0


def _run_sweep_status(args: argparse.Namespace) -> int:
    from sweep.status import format_status
    from sweep.storage import read_sweep

    print(format_status(read_sweep(args.sweep_dir)))
    return 0


def _run_sweep_trust(args: argparse.Namespace) -> int:
    from common import layout, stage_record
    from sweep import staging, trust
    from sweep.storage import read_sweep

    sweep = read_sweep(args.sweep_dir)
    if not sweep.exists(layout.SPEC):
        raise UserError(f"{sweep.where}: not a sweep folder (no {layout.SPEC})")
    names = [n for n in dict.fromkeys(staging.tune_name(s) for s in range(stage_record.DONE))
             if sweep.exists(n)]
    signed = trust.trust(sweep, names)
    print(f"{sweep.where}: signed {signed} files of Tune's restore point "
          f"({', '.join(names) or 'none yet'}) with your key {trust.key_path()}; "
          "`sweep resume` will hand them to Ray")
    return 0


def _run_sweep_presets(args: argparse.Namespace) -> int:
    from sweep.status import format_presets

    print(format_presets())
    return 0


def _add_sweep_parser(sub) -> None:
    sweep = sub.add_parser("sweep", help="plan, run, resume and inspect Ray Tune sweeps",
                           description="Sweeps over a grid of trials on Ray (see `sweep presets`).")
    commands = sweep.add_subparsers(dest="sweep_command", required=True, metavar="ACTION")
    spec_help = "YAML sweep spec, or a preset's name (smoothadv sweep presets)"
    from sweep.spec import MAX_TRIALS

    max_trials_help = (f"refuse a grid of more trials than N (default: the spec's max_trials, "
                       f"else {MAX_TRIALS:,}), counted before the grid is expanded")
    p = commands.add_parser("plan", help="list the trials of a spec and what they request",
                            description="List a spec's trials (no Ray started).")
    p.add_argument("spec", help=spec_help)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a default (resources.KEY, schedule.KEY, stages.KEY for "
                   "those blocks; schedule=null turns early stopping off)")
    p.add_argument("--max-trials", type=int, metavar="N", help=max_trials_help)
    p.set_defaults(func=_run_sweep_plan)
    p = commands.add_parser("presets", help="list the sweep specs shipped with smoothadv",
                            description="The paper's grids, usable by name from anywhere.")
    p.set_defaults(func=_run_sweep_presets)
    dashboard_help = ("with local Ray, also start its dashboard on 127.0.0.1:8265 (off by "
                      "default: a dozen processes on a small machine)")
    ray_help = "Ray address (default: RAY_ADDRESS, else start Ray locally on 127.0.0.1)"
    concurrent_help = ("trials running at once (default: resources.max_concurrent, else as "
                       "many as the cluster holds when the sweep starts; set it on an "
                       "autoscaling cluster)")
    from sweep.trackers import TRACKERS

    log_help = ("also log each trial's gridded values, config and metrics to an experiment "
                "tracker, through Ray Tune's logger callbacks (repeatable): mlflow logs to "
                "MLFLOW_TRACKING_URI, else to the SQLite store STORAGE/NAME/mlflow.db, in the "
                "experiment named after the sweep; wandb logs to the project named after the "
                "sweep, offline (runs in STORAGE/NAME/wandb) unless WANDB_API_KEY "
                "or WANDB_MODE says otherwise. Each needs its extra: pip install "
                "'smoothadv[mlflow]' or 'smoothadv[wandb]'")
    p = commands.add_parser("run", help="run a sweep on Ray",
                            description="Run every trial of a spec: train, certify, report.")
    p.add_argument("spec", help=spec_help)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a default, e.g. init_from=PATH (resources.KEY, schedule.KEY, "
                   "stages.KEY for those blocks; schedule=null turns early stopping off)")
    p.add_argument("--address", help=ray_help)
    p.add_argument("--storage", default="sweeps",
                   help="folder holding the sweep folder STORAGE/NAME (one every node mounts "
                   "on a cluster), or a bucket URI: s3://bucket/prefix, gs://…")
    p.add_argument("--max-trials", type=int, metavar="N", help=max_trials_help)
    p.add_argument("--max-concurrent", type=int, help=concurrent_help)
    p.add_argument("--verbose", type=int, default=1, choices=[0, 1, 2],
                   help="Tune's console output level")
    p.add_argument("--dashboard", action="store_true", help=dashboard_help)
    p.add_argument("--log-to", action="append", default=[], choices=TRACKERS, help=log_help)
    p.set_defaults(func=_run_sweep_run)
    p = commands.add_parser("resume", help="continue an interrupted or failed sweep",
                            description="Continue a sweep: unfinished trials go on from their "
                            "checkpoints, errored ones resume (or restart), finished ones stay.")
    p.add_argument("sweep_dir", help="the sweep folder or URI (STORAGE/NAME)")
    p.add_argument("--restart-errored", action="store_true",
                   help="start errored trials from scratch (old outputs move to errored/)")
    p.add_argument("--address", help=ray_help)
    p.add_argument("--max-concurrent", type=int, help=concurrent_help)
    p.add_argument("--verbose", type=int, default=1, choices=[0, 1, 2],
                   help="Tune's console output level")
    p.add_argument("--dashboard", action="store_true", help=dashboard_help)
    p.add_argument("--log-to", action="append", default=[], choices=TRACKERS,
                   help="as for `sweep run`. A resumed sweep keeps logging to the trackers it "
                   "logged to before (Tune's restore point keeps them; their store and names "
                   "come from the environment when it sets them, else stay the first run's), "
                   "and --log-to adds one; a trial resumed goes on in its earlier MLflow run")
    p.set_defaults(func=_run_sweep_resume)
    p = commands.add_parser("status", help="one line per trial: state, epoch, certification",
                            description="Show each trial's state, epoch, certification "
                            "progress and first error line.")
    p.add_argument("sweep_dir", help="the sweep folder or URI (STORAGE/NAME)")
    p.set_defaults(func=_run_sweep_status)
    p = commands.add_parser("stop", help="stop a running sweep and end its Ray processes",
                            description="Stop a sweep's driver as Ctrl-C would (state and "
                            "checkpoints are kept), then end any Ray process it left behind.")
    p.add_argument("sweep_dir", help="the sweep folder or URI (STORAGE/NAME)")
    p.set_defaults(func=_run_sweep_stop)
    p = commands.add_parser(
        "trust", help="sign a sweep's Tune state after reading it (another user's sweep)",
        description="Sign the files of the sweep's Tune restore point (tune/) with your key, "
        "so that `sweep resume` hands them to Ray, which unpickles them: only for a sweep "
        "folder you trust, e.g. a colleague's, after reading it. A sweep your own drivers "
        "ran needs no trust: they sign as they write (README: security).")
    p.add_argument("sweep_dir", help="the sweep folder or URI (STORAGE/NAME)")
    p.set_defaults(func=_run_sweep_trust)


def _version() -> str:
    from common.provenance import version

    return version()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="smoothadv",
        description="Train, certify and compare provably robust smoothed classifiers.",
    )
    parser.add_argument("--version", action="version", version=f"smoothadv {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("certify", help="Cohen et al.'s CERTIFY on a dataset's images",
                       description="Certify images with CERTIFY (Cohen et al. 2019); resumable.")
    _add_smoothing_args(p, certifying=True)
    p.set_defaults(func=_run_smoothing)
    p = sub.add_parser("predict", help="Cohen et al.'s PREDICT on a dataset's images",
                       description="Classify images with PREDICT (Cohen et al. 2019); resumable.")
    _add_smoothing_args(p, certifying=False)
    p.set_defaults(func=_run_smoothing)
    p = sub.add_parser("attack", help="SmoothAdv-PGD attack, then PREDICT (empirical accuracy)",
                       description="Attack images with SmoothAdv-PGD (Salman et al. 2019, "
                       "Section 4.3) at each ε and classify them with PREDICT; resumable.")
    _add_smoothing_args(p, certifying=False, kernels=False)
    p.add_argument("--epsilon", type=float, nargs="+", required=True,
                   help="ℓ2 attack radii in [0,1] pixel units, e.g. 0.25 0.5 1.0")
    p.add_argument("--steps", type=int, default=20, help="PGD steps (step size 2ε/steps)")
    p.add_argument("--m-test", type=int, default=128,
                   help="noise samples in the attack's objective, drawn once per image and ε")
    p.set_defaults(func=_run_attack)
    p = sub.add_parser("train", help="train one trial without Ray",
                       description="Train one trial (resumes from OUT/checkpoint.pt).")
    p.add_argument("config", help="YAML trial config")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key (certify.n=1000 for the nested block)")
    p.add_argument("--out", required=True, help="trial folder: checkpoint, metrics, config")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=_run_train)
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
    p.add_argument("--device", default=None, help="torch device (default: cuda if available)")
    p.add_argument("--data-root", help="folder holding the dataset files (DATASET:SPLIT)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=_run_pseudo_label)
    p = sub.add_parser("analyze", help="certified-accuracy envelopes, figures and tables",
                       description="Gather the certification of sweeps (and of logs made "
                       "elsewhere) into results.parquet, envelope CSVs, the paper's Figure 1/2 "
                       "panels and Tables 1-2, 3 and 7-15.")
    p.add_argument("sweep_dirs", nargs="*", metavar="SWEEP_DIR", help="sweep folder")
    p.add_argument("--logs", metavar="MAPPING.csv", help="CSV with a path column (relative to "
                   "the CSV) naming certify logs, and trial-value columns (sigma, attack, "
                   "epsilon, m_train, steps, method, dataset, alpha; label names the trial)")
    p.add_argument("-o", "--out", required=True, metavar="REPORT_DIR", help="report folder")
    p.add_argument("--radii", type=float, nargs="+", default=[],
                   help="extra radii for certified_accuracy.csv (besides every 0.25)")
    p.add_argument("--selection", choices=["max", "holdout"], default="max",
                   help="envelope: best trial per radius (max, as in the paper) or chosen on "
                   "half the images and measured on the other half (holdout)")
    p.add_argument("--reference", metavar="NAMES",
                   help="published rows to draw, comma-separated: cohen,smoothadv,smoothadv_both")
    p.add_argument("--representative", nargs="+", default=[], metavar="NAME",
                   help="trials for representative_per_sigma (default: largest ACR per σ)")
    p.add_argument("--rho", type=float, default=0.001,
                   help="failure probability of Cohen's high-probability accuracy bound")
    p.add_argument("--include-incomplete", action="store_true",
                   help="also draw trials certified on fewer images than planned, marked "
                   "'(incomplete k/N)' (default: listed, left out)")
    p.set_defaults(func=_run_analyze)
    _add_sweep_parser(sub)
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
