"""``smoothadv sweep``: plan, presets, run, resume, status, stop and trust a Ray Tune sweep
(sweep.spec, sweep.lifecycle, sweep.status, sweep.trust)."""

from __future__ import annotations

import argparse

from smoothadv.cli.shared import HelpFormatter, add_set, add_verb, examples
from smoothadv.common.errors import UserError
from smoothadv.sweep.spec import MAX_TRIALS
from smoothadv.sweep.trackers import TRACKERS

EXAMPLES = {
    "plan": ("smoothadv sweep plan cifar10_paper",
             "smoothadv sweep plan quickstart --summary  # only the trials, requests and cost",
             "smoothadv sweep plan configs/cifar10_fast.yaml --set resources.gpus_per_worker=0.5"),
    "presets": ("smoothadv sweep presets",),
    "run": ("smoothadv sweep run quickstart --storage sweeps",
            "smoothadv sweep run cifar10_paper --address auto --storage /shared/sweeps "
            "--max-concurrent 8",
            "smoothadv sweep run quickstart --storage s3://bucket/sweeps --log-to mlflow",
            "smoothadv sweep run cifar10_finetune --storage sweeps "
            "--set init_from_sweep=sweeps/imagenet32_pretrain"),
    "resume": ("smoothadv sweep resume sweeps/quickstart",
               "smoothadv sweep resume /shared/sweeps/cifar10_paper --address auto "
               "--restart-errored"),
    "status": ("smoothadv sweep status sweeps/quickstart",
               "smoothadv sweep status s3://bucket/sweeps/cifar10_paper"),
    "stop": ("smoothadv sweep stop sweeps/quickstart",),
    "trust": ("smoothadv sweep trust /shared/sweeps/cifar10_paper",),
    "sweep": ("smoothadv sweep presets", "smoothadv sweep plan quickstart",
              "smoothadv sweep run quickstart --storage sweeps",
              "smoothadv sweep status sweeps/quickstart",
              "smoothadv analyze sweeps/quickstart -o sweeps/quickstart/report"),
}
SPEC_HELP = "YAML sweep spec, or a preset's name (smoothadv sweep presets)"
SWEEP_DIR_HELP = "the sweep folder or URI (STORAGE/NAME)"
MAX_TRIALS_HELP = (f"refuse a grid of more trials than N (default: the spec's max_trials, "
                   f"else {MAX_TRIALS:,}), counted before the grid is expanded")
RAY_HELP = "Ray address (default: RAY_ADDRESS, else start Ray locally on 127.0.0.1)"
CONCURRENT_HELP = ("trials running at once (default: resources.max_concurrent, else as "
                   "many as the cluster holds when the sweep starts; set it on an "
                   "autoscaling cluster)")
DASHBOARD_HELP = ("with local Ray, also start its dashboard on 127.0.0.1:8265 (off by "
                  "default: a dozen processes on a small machine)")
LOG_TO_HELP = ("also log each trial's gridded values, config and metrics to an experiment "
               "tracker, through Ray Tune's logger callbacks (repeatable): mlflow logs to "
               "MLFLOW_TRACKING_URI, else to the SQLite store STORAGE/NAME/mlflow.db, in the "
               "experiment named after the sweep; wandb logs to the project named after the "
               "sweep, offline (runs in STORAGE/NAME/wandb) unless WANDB_API_KEY "
               "or WANDB_MODE says otherwise. Each needs its extra: pip install "
               "'smoothadv[mlflow]' or 'smoothadv[wandb]'")
RESUME_LOG_TO_HELP = ("as for `sweep run`. A resumed sweep keeps logging to the trackers it "
                      "logged to before (Tune's restore point keeps them; their store and "
                      "names come from the environment when it sets them, else stay the first "
                      "run's), and --log-to adds one; a trial resumed goes on in its earlier "
                      "MLflow run")


def _add_driver_args(p: argparse.ArgumentParser, log_to_help: str) -> None:
    """What a sweep's driver takes, in run and resume: concurrency, output, trackers."""
    p.add_argument("--max-concurrent", type=int, help=CONCURRENT_HELP)
    p.add_argument("--verbose", nargs="?", type=int, const=2, default=0, choices=[0, 1, 2],
                   metavar="LEVEL", help="Ray Tune's own progress reports (trial tables, each "
                   "trial's config) instead of smoothadv's compact lines (a trial's start, its "
                   "epochs, its end); LEVEL: Tune's verbosity, 2 when not given (0: the compact "
                   "lines, the default)")
    p.add_argument("--dashboard", action="store_true", help=DASHBOARD_HELP)
    p.add_argument("--log-to", action="append", default=[], choices=TRACKERS, help=log_to_help)


def _add_plan(commands) -> None:
    """plan and presets: what a spec or the shipped specs hold, no Ray started."""
    p = add_verb(commands, "plan", help="list the trials of a spec and what they request",
                 description="A spec's summary (trials, what each requests, the cost in "
                 "trial-epochs, how many run at once here), then its trials (no Ray started).",
                 example=EXAMPLES["plan"])
    p.add_argument("spec", help=SPEC_HELP)
    add_set(p, "override a default (resources.KEY, schedule.KEY, stages.KEY for those "
            "blocks; schedule=null turns early stopping off)")
    p.add_argument("--max-trials", type=int, metavar="N", help=MAX_TRIALS_HELP)
    p.add_argument("--summary", action="store_true",
                   help="print only the summary, not the table of trials")
    p.set_defaults(func=_run_plan)
    p = add_verb(commands, "presets", help="list the sweep specs shipped with smoothadv",
                 description="The paper's grids, usable by name from anywhere: each preset's "
                 "name, trial count and whole description.", example=EXAMPLES["presets"])
    p.set_defaults(func=_run_presets)


def _add_run(commands) -> None:
    p = add_verb(commands, "run", help="run a sweep on Ray",
                 description="Run every trial of a spec: train, certify, report.",
                 example=EXAMPLES["run"])
    p.add_argument("spec", help=SPEC_HELP)
    add_set(p, "override a default, e.g. init_from=PATH (resources.KEY, schedule.KEY, "
            "stages.KEY for those blocks; schedule=null turns early stopping off)")
    p.add_argument("--address", help=RAY_HELP)
    p.add_argument("--storage", default="sweeps",
                   help="folder holding the sweep folder STORAGE/NAME (one every node mounts "
                   "on a cluster), or a bucket URI: s3://bucket/prefix, gs://…")
    p.add_argument("--max-trials", type=int, metavar="N", help=MAX_TRIALS_HELP)
    _add_driver_args(p, LOG_TO_HELP)
    p.set_defaults(func=_run_run)


def _add_resume(commands) -> None:
    p = add_verb(commands, "resume", help="continue an interrupted or failed sweep",
                 description="Continue a sweep: unfinished trials go on from their "
                 "checkpoints, errored ones resume (or restart), finished ones stay.",
                 example=EXAMPLES["resume"])
    p.add_argument("sweep_dir", help=SWEEP_DIR_HELP)
    p.add_argument("--restart-errored", action="store_true",
                   help="start errored trials from scratch (old outputs move to errored/)")
    p.add_argument("--address", help=RAY_HELP)
    _add_driver_args(p, RESUME_LOG_TO_HELP)
    p.set_defaults(func=_run_resume)


def _add_folder_verbs(commands) -> None:
    """status, stop and trust: each takes a sweep folder only."""
    p = add_verb(commands, "status", help="one line per trial: state, epoch, certification",
                 description="Show each trial's state, epoch, certification progress and first "
                 "error line.", example=EXAMPLES["status"])
    p.add_argument("sweep_dir", help=SWEEP_DIR_HELP)
    p.set_defaults(func=_run_status)
    p = add_verb(commands, "stop", help="stop a running sweep and end its Ray processes",
                 description="Stop a sweep's driver as Ctrl-C would (state and checkpoints are "
                 "kept), then end any Ray process it left behind.", example=EXAMPLES["stop"])
    p.add_argument("sweep_dir", help=SWEEP_DIR_HELP)
    p.set_defaults(func=_run_stop)
    p = add_verb(
        commands, "trust",
        help="sign a sweep's Tune state after reading it (another user's sweep)",
        description="Sign the files of the sweep's Tune restore point (tune/) with your key, "
        "so that `sweep resume` hands them to Ray, which unpickles them: only for a sweep "
        "folder you trust, e.g. a colleague's, after reading it. A sweep your own drivers "
        "ran needs no trust: they sign as they write (docs/security.md).",
        example=EXAMPLES["trust"])
    p.add_argument("sweep_dir", help=SWEEP_DIR_HELP)
    p.set_defaults(func=_run_trust)


def add_parsers(sub) -> None:
    """sweep, with its verbs plan, presets, run, resume, status, stop and trust."""
    sweep = sub.add_parser("sweep", help="plan, run, resume and inspect Ray Tune sweeps",
                           description="Sweeps over a grid of trials on Ray (see `sweep "
                           "presets`). Each ACTION's --help lists its options and examples.",
                           epilog=examples(*EXAMPLES["sweep"]), formatter_class=HelpFormatter)
    commands = sweep.add_subparsers(dest="sweep_command", required=True, metavar="ACTION")
    _add_plan(commands)
    _add_run(commands)
    _add_resume(commands)
    _add_folder_verbs(commands)


def _run_plan(args: argparse.Namespace) -> int:
    from smoothadv.sweep.spec import load_spec
    from smoothadv.sweep.status import format_plan

    print(format_plan(load_spec(args.spec, args.set, args.max_trials),
                      summary_only=args.summary))
    return 0


def _run_presets(args: argparse.Namespace) -> int:
    from smoothadv.sweep.status import format_presets

    print(format_presets())
    return 0


def _run_run(args: argparse.Namespace) -> int:
    from smoothadv.sweep.lifecycle import run_sweep

    errors = run_sweep(args.spec, args.set, storage=args.storage, launch=_launch(args),
                       log_to=args.log_to, max_trials=args.max_trials)
    return 1 if errors else 0


def _run_resume(args: argparse.Namespace) -> int:
    from smoothadv.sweep.lifecycle import resume_sweep

    errors = resume_sweep(args.sweep_dir, restart_errored=args.restart_errored,
                          launch=_launch(args), log_to=args.log_to)
    return 1 if errors else 0


def _launch(args: argparse.Namespace):
    from smoothadv.sweep.lifecycle import Launch

    return Launch(address=args.address, dashboard=args.dashboard,
                  max_concurrent=args.max_concurrent, verbose=args.verbose)


def _run_stop(args: argparse.Namespace) -> int:
    from smoothadv.sweep.lifecycle import stop_sweep

    stop_sweep(args.sweep_dir)
    return 0


def _run_status(args: argparse.Namespace) -> int:
    from smoothadv.sweep.status import format_status
    from smoothadv.sweep.storage import read_sweep

    print(format_status(read_sweep(args.sweep_dir)))
    return 0


def _run_trust(args: argparse.Namespace) -> int:
    from smoothadv.common import layout, stages_file
    from smoothadv.sweep import staged_sweep, trust
    from smoothadv.sweep.storage import read_sweep

    sweep = read_sweep(args.sweep_dir)
    if not sweep.exists(layout.SPEC):
        raise UserError(f"{sweep.where}: not a sweep folder (no {layout.SPEC})")
    names = [n for n in dict.fromkeys(staged_sweep.tune_name(s) for s in range(stages_file.DONE))
             if sweep.exists(n)]
    signed = trust.trust(sweep, names)
    print(f"{sweep.where}: signed {signed} files of Tune's restore point "
          f"({', '.join(names) or 'none yet'}) with your key {trust.key_path()}; "
          "`sweep resume` will hand them to Ray")
    return 0
