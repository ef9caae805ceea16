"""SIGTERM stops a sweep as Ctrl-C does (Kubernetes deleting the driver's pod, SLURM ending its
job); the driver's heartbeat is sweep.driver_record's."""

from __future__ import annotations

import os
import signal


class Terminated(KeyboardInterrupt):
    """The driver got SIGTERM and stopped the sweep as Ctrl-C does; the command line exits
    143 (128 + SIGTERM)."""


def stop_on_sigterm() -> list[bool]:
    """Make SIGTERM stop the sweep like Ctrl-C: Tune's graceful-stop handler (it listens to
    SIGUSR1 as to SIGINT) saves the experiment state and ends the trials. Returns a flag that
    is set once the signal came."""
    got = [False]
    before_tune = signal.getsignal(signal.SIGUSR1)

    def forward(signum, frame):
        got[0] = True
        if signal.getsignal(signal.SIGUSR1) is before_tune:  # Tune has not started yet
            raise Terminated
        os.kill(os.getpid(), signal.SIGUSR1)

    signal.signal(signal.SIGTERM, forward)
    return got
