"""Joining a Ray cluster, or starting Ray on this machine when none is named.

A local Ray listens on 127.0.0.1 only, dashboard included (sweep.ray_private.loopback_only),
and starts its dashboard only when asked: it costs a dozen processes on a small machine.
"""

from __future__ import annotations

import logging
import os

from smoothadv.common.errors import UserError, first_line
from smoothadv.sweep import processes
from smoothadv.sweep.log_filters import filtered
from smoothadv.sweep.train_loop import NO_STATE_API

OBJECT_STORE_BYTES = 256 * 1024**2  # trials pass configs and metrics only

# What a local Ray's processes inherit (see set_local_ray_env).
LOCAL_RAY_ENV = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
                 "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5"}


def is_local(address: str | None) -> bool:
    """No cluster named (neither ``--address`` nor RAY_ADDRESS): Ray starts on this machine."""
    return not (address or os.environ.get("RAY_ADDRESS"))


def set_local_ray_env(dashboard: bool = False) -> None:
    """The environment a local Ray must start with (its processes inherit it): one machine has
    no spot preemption to watch, so each trial is spared that actor process; a Train controller
    polls its workers every 2 s by default, so a finished trial idles about 5 s before the next
    starts (0.5 s costs nothing locally); without a dashboard there is no state API for Ray
    Train's placement-group cleaner (sweep.train_loop.trainer_class)."""
    for key, value in LOCAL_RAY_ENV.items():
        os.environ.setdefault(key, value)
    if dashboard:
        os.environ.pop(NO_STATE_API, None)
    else:
        os.environ[NO_STATE_API] = "1"


def init_ray(address: str | None, dashboard: bool = False) -> list[processes.Process]:
    """Join ``address`` (or RAY_ADDRESS); with neither, start Ray locally on 127.0.0.1 (its
    dashboard only when asked). Returns the Ray processes this call started (to end them if
    this driver dies)."""
    import ray
    from smoothadv.sweep.ray_private import loopback_only

    if ray.is_initialized():  # e.g. a test session sharing one local cluster
        return []
    if not is_local(address):
        try:
            ray.init(address=address, log_to_driver=False)
        except ConnectionError as e:
            raise UserError(f"--address {address or os.environ['RAY_ADDRESS']}: cannot "
                            f"connect to a Ray cluster ({first_line(e)})") from None
        return []
    set_local_ray_env(dashboard)
    with loopback_only(), filtered(START_LOGGERS, _not_a_start_note):
        # address="local": a new Ray of our own, never a cluster some `ray start` left here
        ray.init(address="local", _node_ip_address="127.0.0.1", dashboard_host="127.0.0.1",
                 object_store_memory=OBJECT_STORE_BYTES, log_to_driver=False,
                 include_dashboard=dashboard)
    return processes.descendants(os.getpid())


# What a local Ray's start logs to the console that says nothing to a sweep's user (the sweep
# prints its own first line): its token note (the token is made and kept by Ray itself) and
# that it started. Warnings and errors of any other kind still show.
START_NOTES = ("Token authentication is enabled for this Ray cluster",
               "Started a local Ray instance")
START_LOGGERS = ("ray._private.authentication.authentication_token_setup", "ray._private.worker")


def _not_a_start_note(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith(START_NOTES)
