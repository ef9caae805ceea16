"""cluster/slurm/smoothadv.sbatch, run the way SLURM runs its body, on this machine: a one-node
allocation's environment, real Ray (`ray start --head`), the real sweep driver, and `srun` and
`scontrol` replaced by the two-line shims a one-node allocation reduces them to. The home folder
is fresh, as on a new cluster: the job makes Ray's token itself. Its #SBATCH directives are read
as sbatch reads them: whole nodes, one log per job that a requeued run appends to."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from ports import free_port
from smoothadv.common import layout

ROOT = Path(__file__).resolve().parent.parent
SBATCH = ROOT / "cluster" / "slurm" / "smoothadv.sbatch"
SPEC = {"name": "slurm",
        "defaults": {"dataset": "synthetic", "arch": "lenet", "train_subset": 64,
                     "epoch_test_subset": 32, "epochs": 1, "batch_size": 64, "lr": 0.05,
                     "method": "gaussian", "device": "cpu",
                     "certify": {"n0": 16, "n": 100, "batch_size": 100, "skip": 128}},
        "resources": {"workers": 1, "cpus_per_worker": 1},
        "grid": {"sigma": [0.25, 0.5]}}


def shims(folder: Path) -> Path:
    """`srun OPTIONS CMD…` runs CMD on the one node; `scontrol show hostnames` prints it;
    `scontrol requeue ID` is recorded."""
    folder.mkdir()
    (folder / "srun").write_text(
        '#!/usr/bin/env bash\nwhile [[ "$1" == -* ]]; do [[ "$1" == -w ]] && shift; shift; done\n'
        'exec "$@"\n')
    (folder / "scontrol").write_text(
        '#!/usr/bin/env bash\nif [ "$1 $2" = "show hostnames" ]; then hostname; '
        f'else echo "$@" >> {folder}/scontrol.log; fi\n')
    for shim in ("srun", "scontrol"):
        (folder / shim).chmod(0o755)
    return folder



@pytest.fixture
def ray_address_file():
    """`ray start` records its cluster in /tmp/ray/ray_current_cluster, which outlives the
    job's Ray here: put back what was there before."""
    path = Path("/tmp/ray/ray_current_cluster")
    before = path.read_bytes() if path.exists() else None
    yield
    if before is None:
        path.unlink(missing_ok=True)
    else:
        path.write_bytes(before)


def test_the_sbatch_body_starts_ray_runs_the_sweep_and_resumes_on_a_second_run(
        tmp_path, ray_address_file):
    spec = tmp_path / "slurm.yaml"
    spec.write_text(yaml.safe_dump(SPEC))
    bin_dir = shims(tmp_path / "bin")
    venv = Path(sys.executable).parent
    env = {**{k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "SMOOTHADV_FAULTS")},
           "PATH": f"{bin_dir}:{venv}:{os.environ['PATH']}",
           "SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": socket.gethostname(),
           "SLURM_NNODES": "1", "SLURM_CPUS_PER_TASK": "2",
           "SPEC": str(spec), "STORAGE": str(tmp_path / "sweeps"), "PYTHON": sys.executable,
           "RAY_PORT": str(free_port()), "RAY_HEAD_IP": "127.0.0.1",
           "RAY_DASHBOARD_PORT": str(free_port()),
           # a fresh home: no Ray token yet (the job makes one), and the user's is left alone
           "HOME": str(tmp_path / "home")}
    env.pop("RAY_AUTH_TOKEN", None)
    run = subprocess.run(["bash", str(SBATCH), "--verbose", "0"], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=400)
    assert run.returncode == 0, (run.stdout[-2000:], run.stderr[-3000:])
    sweep_dir = tmp_path / "sweeps" / "slurm"
    assert "slurm: 2 trials, at most 2 at once" in run.stdout
    token = tmp_path / "home" / ".ray" / "auth_token"
    assert token.stat().st_mode & 0o777 == 0o600, oct(token.stat().st_mode)
    made = token.read_bytes()
    for trial in ("sigma0.25", "sigma0.5"):
        state = layout.read_json(layout.trial_dir(sweep_dir, trial) / layout.STATE)
        assert state["state"] == "TERMINATED"
    # A requeued job finds the sweep and resumes it (nothing left to do) instead of refusing.
    again = subprocess.run(["bash", str(SBATCH), "--verbose", "0"], env=env, cwd=tmp_path,
                           capture_output=True, text=True, timeout=400)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "every trial finished; nothing to resume" in again.stdout
    assert token.read_bytes() == made  # the requeued job keeps the cluster's token
    assert not (bin_dir / "scontrol.log").exists()  # finished: no requeue
    leftover = subprocess.run(["pgrep", "-f", f"--port={env['RAY_PORT']}"],
                              capture_output=True, text=True)
    assert not leftover.stdout.strip()  # the job's Ray head ended with the job


def sbatch_directives(text: str) -> dict[str, str | None]:
    """The options of the #SBATCH lines sbatch reads: those before the first line that is
    neither blank nor a comment (sbatch ignores any later one); ``--opt=value`` and ``--opt
    value`` alike, a flag's value None."""
    options: dict[str, str | None] = {}
    lines = text.splitlines()
    end = next((i for i, line in enumerate(lines)
                if line.strip() and not line.lstrip().startswith("#")), len(lines))
    for line in lines[:end]:
        if line.startswith("#SBATCH"):
            words = line.split("#", 2)[1].split()[1:]  # (a later # starts a comment)
            for i, word in enumerate(words):
                if word.startswith("--"):
                    name, _, value = word.partition("=")
                    following = words[i + 1] if i + 1 < len(words) else None
                    options[name] = value or (following if following and
                                              not following.startswith("-") else None)
    late = [line for line in lines[end:] if line.startswith("#SBATCH")]
    assert not late, f"sbatch ignores #SBATCH lines after the first command: {late}"
    return options


def test_the_job_takes_whole_nodes_and_a_requeue_appends_to_its_log():
    """Two jobs on one node would start two Ray heads on the same ports (6379, the dashboard's,
    the agents' fixed 52365) and in the same /tmp/ray: --exclusive. A requeued job keeps its id,
    so its --output file (one per job id, nothing that changes between runs) is the first run's,
    which SLURM truncates unless --open-mode=append."""
    options = sbatch_directives(SBATCH.read_text())
    assert "--exclusive" in options and options["--exclusive"] is None  # (=user: shared)
    assert "--requeue" in options
    assert options.get("--open-mode") == "append"
    output = options["--output"]
    assert "%j" in output and set(re.findall(r"%.", output)) <= {"%j", "%x", "%u"}, output
    assert "--error" not in options  # stderr in the same log


def test_the_directive_reader_reads_as_sbatch_does():
    text = ("#!/bin/bash\n# about\n#SBATCH --exclusive\n#SBATCH --open-mode append\n\n"
            "#SBATCH --output=x-%j.out  # the log\nset -u\n")
    assert sbatch_directives(text) == {"--exclusive": None, "--open-mode": "append",
                                       "--output": "x-%j.out"}
    with pytest.raises(AssertionError, match="ignores #SBATCH lines"):
        sbatch_directives(text + "#SBATCH --exclusive\n")
