"""Driving `smoothadv` commands as separate processes, as a user does, for the tests that kill
them (test_kill_matrix, test_staged_sweep): each in a session of its own, so that SIGKILLing
its process group ends the driver and the local Ray it started, as losing the head node does."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from smoothadv.common import layout


def smoothadv(*args: str, env: dict, log: Path) -> subprocess.Popen:
    """A `smoothadv` command in a session of its own (its process group: the driver and the
    local Ray it starts), output to ``log``."""
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "smoothadv.cli.main", *args], env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def run(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "smoothadv.cli.main", *args], env=env,
                          capture_output=True, text=True, timeout=600)


def wait_for(condition, driver: subprocess.Popen, log: Path, what: str,
             timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert driver.poll() is None, f"the driver ended before {what}:\n" + \
            log.read_text()[-3000:]
        assert time.monotonic() < deadline, f"never reached: {what}"
        time.sleep(0.1)


def kill_group(driver: subprocess.Popen) -> None:
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()


def states(sweep_dir: Path, names: list[str]) -> dict[str, str | None]:
    return {n: (layout.read_json(layout.trial_dir(sweep_dir, n) / layout.STATE) or {})
            .get("state") for n in names}


def status_after_kill(sweep_dir: Path, env: dict) -> list[str]:
    """`sweep status` after a kill: no trial RUNNING or ERROR; returns its lines."""
    out = run("sweep", "status", str(sweep_dir), env=env)
    assert out.returncode == 0, out.stderr
    table = [line.split() for line in out.stdout.splitlines()[1:]]
    shown = {row[0]: row[1] for row in table if row}
    assert not set(shown.values()) & {"RUNNING", "ERROR"}, out.stdout
    return out.stdout.splitlines()


def fingerprint(sweep_dir: Path) -> dict[str, str]:
    """Every file of the sweep's trials and records, by its bytes."""
    return {str(p.relative_to(sweep_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(sweep_dir.rglob("*")) if p.is_file() and
            p.parts[len(sweep_dir.parts)] in (layout.TRIALS, layout.STAGES, layout.SCHEDULE)}


def resume_changes_nothing(sweep_dir: Path, env: dict) -> None:
    before = fingerprint(sweep_dir)
    again = run("sweep", "resume", str(sweep_dir), "--verbose", "0", env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert fingerprint(sweep_dir) == before
