"""``smoothadv analyze``: sweeps' certification (and logs made elsewhere) into a report of
envelopes, figures and tables (analysis.report)."""

from __future__ import annotations

import argparse

from smoothadv.cli.shared import add_out, add_verb

ANALYZE_EXAMPLES = (
    "smoothadv analyze sweeps/quickstart -o sweeps/quickstart/report",
    "smoothadv analyze sweeps/cifar10_paper sweeps/cifar10_cohen -o report "
    "--reference cohen,smoothadv --radii 0.435",
    "smoothadv analyze --logs runs.csv -o report --selection holdout  # certify logs made "
    "elsewhere",
)


def add_parsers(sub) -> None:
    """analyze."""
    p = add_verb(sub, "analyze", help="certified-accuracy envelopes, figures and tables",
                 description="Gather the certification of sweeps (and of logs made elsewhere) "
                 "into results.parquet, envelope CSVs, the paper's Figure 1/2 panels and Tables "
                 "1-2, 3 and 7-15.", example=ANALYZE_EXAMPLES)
    p.add_argument("sweep_dirs", nargs="*", metavar="sweep_dir",
                   help="sweep folder or URI (STORAGE/NAME); several are analyzed together")
    p.add_argument("--logs", metavar="MAPPING.csv", help="CSV with a path column (relative to "
                   "the CSV) naming certify logs, and trial-value columns (sigma, attack, "
                   "epsilon, m_train, steps, method, dataset, alpha; label names the trial)")
    add_out(p, "report folder")
    p.add_argument("--radii", type=float, nargs="+", default=[],
                   help="extra radii for certified_accuracy.csv (besides every 0.25)")
    p.add_argument("--selection", choices=["max", "holdout"], default="max",
                   help="envelope: best trial per radius (max, as in the paper) or chosen on "
                   "half the images and measured on the other half (holdout)")
    p.add_argument("--reference", metavar="NAMES",
                   help="published rows to draw, comma-separated: cohen,smoothadv,"
                   "smoothadv_both (default: none)")
    p.add_argument("--representative", nargs="+", default=[], metavar="NAME",
                   help="trials for representative_per_sigma (default: largest ACR per σ)")
    p.add_argument("--rho", type=float, default=0.001,
                   help="failure probability of Cohen's high-probability accuracy bound")
    p.add_argument("--include-incomplete", action="store_true",
                   help="also draw trials certified on fewer images than planned, marked "
                   "'(incomplete k/N)' (default: listed, left out)")
    p.set_defaults(func=_run_analyze)


def _run_analyze(args: argparse.Namespace) -> int:
    from smoothadv.analysis.paper_results import parse_references
    from smoothadv.analysis.report import Options, build_report

    options = Options(radii=tuple(args.radii), selection=args.selection,
                      references=parse_references(args.reference),
                      representative=tuple(args.representative), rho=args.rho,
                      include_incomplete=args.include_incomplete)
    from smoothadv.sweep.storage import read_sweep

    # a sweep in a bucket is read from this machine's copy of its records and results
    sweep_dirs = [str(read_sweep(d).local) if "://" in d else d for d in args.sweep_dirs]
    report = build_report(sweep_dirs, args.logs, args.out, options)
    print("\n".join(report.summary))
    return 0
