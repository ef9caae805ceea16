"""One driver per sweep: its lock, and its record (driver.json) with a heartbeat.

- **On the machine**: a sweep driver (``sweep run``, ``sweep resume``) holds the OS lock of the
  sweep's folder (common.writer_lock; in a bucket, of its local copy) from its first check to
  its exit; a second driver is refused in one line naming the first. The kernel frees the lock
  of a killed driver.
- **Across machines**: the driver's record, driver.json (pid, process start time, host, a
  random token, the Ray processes it started; signed with the user's key, sweep.trust, so that
  only a record this user's driver wrote makes `sweep stop` end a process), is rewritten
  with a ``heartbeat`` time every HEARTBEAT_S seconds (sweep.status judges a record from
  another host stale after STALE_S).
  In a bucket, which has no lock, the record is the lease: a driver writes its record only
  when no live driver's record is there, waits LEASE_SETTLE_S, and reads it back; if another
  driver's token is there then, that driver wrote after it and holds the sweep, and this one
  is refused. (S3 reads are strongly consistent; two drivers' read-then-write each take far
  less than the settle time.)
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from smoothadv.common import layout
from smoothadv.common.errors import UserError
from smoothadv.common.records import read_driver
from smoothadv.common.writer_lock import exclusive
from smoothadv.sweep import processes, trust
from smoothadv.sweep.status import HEARTBEAT_S, driver_alive
from smoothadv.sweep.storage import SweepFolder

LOCK = ".driver.lock"  # in the sweep's (local) folder
LEASE_SETTLE_S = 2.0


def locked(sweep: SweepFolder):
    """The sweep's driver lock, held while the block runs (a context manager)."""
    return exclusive(sweep.local / LOCK, sweep.where)


def this_driver(ray_processes: list[processes.Process]) -> dict[str, Any]:
    """This process's driver record (without its heartbeat)."""
    pid = os.getpid()
    return {"pid": pid, "start": processes.start_time(pid), "host": socket.gethostname(),
            "token": uuid.uuid4().hex, "ray_processes": ray_processes}


def _holder(info: dict | None) -> str:
    info = info or {}
    return f"pid {info.get('pid')} on {info.get('host')}"


def claim(sweep: SweepFolder, record: dict[str, Any]) -> Callable[[], None]:
    """Write this driver's record and keep it beating; returns the function that stops the
    heartbeat and removes the record. In a bucket, refuse (UserError) when another live driver
    holds the sweep or claims it at the same moment."""
    if sweep.remote is not None:
        sweep.refresh(sweep.local / layout.DRIVER)
        if driver_alive(sweep.local):
            raise UserError(f"{sweep.where}: another sweep driver is running it "
                            f"({_holder(read_driver(sweep.local / layout.DRIVER))}); "
                            "wait until it ends or stop it with `smoothadv sweep stop`")
    stop = _heartbeat(sweep, record)
    if sweep.remote is not None:
        time.sleep(LEASE_SETTLE_S)
        sweep.refresh(sweep.local / layout.DRIVER)
        now = read_driver(sweep.local / layout.DRIVER) or {}
        if now.get("token") != record["token"]:
            stop(remove=False)
            raise UserError(f"{sweep.where}: another sweep driver claimed it at the same time "
                            f"({_holder(now)}); wait until it ends")
    return stop


def _heartbeat(sweep: SweepFolder, record: dict[str, Any]) -> Callable[..., None]:
    """Write ``record`` with a ``heartbeat`` time now and every HEARTBEAT_S seconds until the
    returned function is called (a write in progress finishes first); that function removes
    the record unless told not to."""
    stop, lock = threading.Event(), threading.Lock()

    def beat() -> None:
        try:
            sweep.write_json(sweep.local / layout.DRIVER,
                             trust.signed({**record, "heartbeat": time.time()}))
        except OSError as e:  # a bucket unreachable for a while: the next beat tries again
            print(f"{sweep.where}: heartbeat not written ({str(e).splitlines()[0]})",
                  flush=True)

    def loop() -> None:
        while not stop.wait(HEARTBEAT_S):
            with lock:
                if not stop.is_set():
                    beat()

    def end(remove: bool = True) -> None:
        with lock:
            stop.set()
        if remove:
            sweep.unlink(sweep.local / layout.DRIVER)

    beat()
    threading.Thread(target=loop, name="driver-heartbeat", daemon=True).start()
    return end


def remove_lock_file(sweep: SweepFolder) -> None:
    """For a refused ``sweep run`` that leaves no folder behind."""
    (sweep.local / LOCK).unlink(missing_ok=True)
