"""A local Ray started as the tool starts it (``sweep.local_ray.init_ray`` with no address) listens
on loopback only: every listening TCP socket of every process it starts (GCS, raylet, the
driver's and the workers' core-worker servers, the dashboard and runtime-env agents, the
autoscaler monitor's and dashboard's metrics servers) is bound to 127.0.0.1 or ::1 (or
::ffff:127.0.0.1, loopback on an IPv6 socket). Ray 2.60 binds them to all interfaces unless the
node's IP is loopback; nothing is left that Ray cannot be told to bind locally, so there are no
exceptions.

The local Ray runs in a process of its own (the test session shares one local Ray that this
must not be), which also checks that nothing of the change outlives the start: a `ray start
--address` its children ran would still join a cluster.
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def listening_sockets() -> dict[str, tuple[str, int]]:
    """Every listening TCP socket on this machine, by inode: (local address, port)."""
    found = {}
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A":  # TCP_LISTEN
                continue
            ip_hex, port_hex = fields[1].split(":")
            raw = bytes.fromhex(ip_hex)  # 32-bit words, each in the kernel's (little) byte order
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
            found[fields[9]] = (socket.inet_ntop(family, raw), int(port_hex, 16))
    return found


def process_name(pid: int) -> str:
    """A Ray process by what it runs: ``ray::IDLE``, ``ray::DashboardAgent``, ``gcs_server``,
    ``raylet``, ``dashboard.py``, ``monitor.py``, ``driver`` (this process)…"""
    if pid == os.getpid():
        return "driver"
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    if argv[0].startswith("ray::"):
        return argv[0].split()[0]
    script = next((a for a in argv[1:] if a.endswith(".py")), None)
    return Path(script or argv[0]).name


def tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        found.append(todo.pop())
        todo += children.get(found[-1], [])
    return found


def listening_by_process(root: int) -> list[tuple[str, str, int]]:
    """(process name, local address, port) for each listening TCP socket of ``root`` and its
    descendants."""
    sockets = listening_sockets()
    rows = set()
    for pid in tree(root):
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
            name = process_name(pid)
        except OSError:  # ended meanwhile
            continue
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in sockets:
                rows.add((name, *sockets[target[8:-1]]))
    return sorted(rows)


def is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


def child() -> None:
    """Start local Ray as `smoothadv sweep run` without --address does; print what listens."""
    import ray
    from ray._private import ray_constants
    from smoothadv.sweep.local_ray import init_ray

    init_ray(None)
    try:
        ray.get(ray.remote(lambda: None).remote())  # a worker has run a task
        print(json.dumps({
            "sockets": listening_by_process(os.getpid()),
            "node_ip": ray.util.get_node_ip_address(),
            # what `ray start --address` (or a later ray.init) in this process or its children
            # would see: a cluster may still be joined
            "cluster_mode_restored": ray_constants.ENABLE_RAY_CLUSTER,
            "env": os.environ.get(ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR),
        }))
    finally:
        ray.shutdown()


def test_local_ray_listens_on_loopback_only(tmp_path):
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "SMOOTHADV_FAULTS") and not k.startswith("RAY_AUTH")}
    # token authentication as a new local Ray has it, with a token of the test's own
    env.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
                "PYTHONPATH": os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])})
    done = subprocess.run([sys.executable, __file__], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    sockets = [tuple(row) for row in report["sockets"]]
    names = {name for name, _, _ in sockets}
    # the scan sees Ray's servers (so an empty list cannot pass); the agents' and metrics'
    # fixed ports (52365, 44217, 44227) may be held by another Ray on this machine
    assert {"driver", "gcs_server", "raylet", "ray::IDLE"} <= names, sockets
    exposed = [row for row in sockets if not is_loopback(row[1])]
    assert not exposed, f"listening beyond loopback: {exposed}"
    assert report["node_ip"] == "127.0.0.1"
    assert report["cluster_mode_restored"] is True and report["env"] is None


if __name__ == "__main__":
    child()
