"""The edges a library user meets: `smoothadv --version`, figures that leave matplotlib's
backend alone, and the versions recorded beside results."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_version_flag_prints_the_installed_version():
    out = subprocess.run([sys.executable, "-m", "smoothadv.cli.main", "--version"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"smoothadv {metadata.version('smoothadv')}")


def test_drawing_the_figures_keeps_the_users_matplotlib_backend(tmp_path):
    """A Jupyter user's backend (here: svg, chosen before the import) is not switched to Agg by
    importing or drawing the report's figures, and PNGs are still written."""
    code = (
        "import matplotlib, sys; matplotlib.use('svg'); from pathlib import Path\n"
        "import pandas as pd; import analysis.report; from analysis import figures\n"
        "fig, ax = figures._axes('t', 1.0); ax.plot([0, 1], [1, 0])\n"
        "figures.save(fig, Path(sys.argv[1]), 'panel')\n"
        "sys.exit(0 if matplotlib.get_backend() == 'svg' else 'backend: ' + "
        "matplotlib.get_backend())\n")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert (tmp_path / "panel.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_provenance_names_the_versions_and_reads_the_hardware_only_from_a_loaded_torch():
    code = ("import sys; from common.provenance import provenance; p = provenance(); "
            "assert 'torch' not in sys.modules, 'imported torch'; "
            "assert 'cuda' not in p and p['torch'] and p['ray'] and p['smoothadv'], p; "
            "import torch; q = provenance(); assert 'cuda' in q and 'gpu' in q, q")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]


def test_certification_records_list_the_versions_of_every_run_that_wrote_rows(tmp_path):
    import json

    import torch
    from smoothadv.certify.results_file import ResultsFile
    from smoothadv.certify.runner import CERTIFY_COLUMNS, run_smoothing
    from smoothadv.common.layout import meta_path
    from smoothadv.common.settings import Sampling

    out = tmp_path / "certify.tsv"
    run_smoothing(torch.nn.Linear(2, 2), 2, [], [], Sampling(sigma=0.25, n=20, n0=4), out,
                  identity={"dataset": "synthetic"}, progress=False)
    record = json.loads(meta_path(out).read_text())
    assert [run["torch"] for run in record["provenance"]] == [metadata.version("torch")]
    settings = {k: v for k, v in record.items() if k != "provenance"}
    first = record["provenance"][0]
    with ResultsFile(out, CERTIFY_COLUMNS, settings, provenance=first):  # the same versions: kept
        pass
    other = {**first, "torch": "9.9.9"}
    with ResultsFile(out, CERTIFY_COLUMNS, settings, provenance=other):  # resumed elsewhere: added
        pass
    assert json.loads(meta_path(out).read_text())["provenance"] == [first, other]
