"""Free TCP ports for servers the tests start (Ray nodes, moto's S3, torch.distributed).

A port the kernel hands out for ``bind(0)`` lies in its ephemeral range, the same range every
outgoing connection on this machine draws its local port from: between our probe and the
server's own bind, one of the many connections a running Ray cluster opens can take it, and the
server then dies at start (a Ray head whose GCS port was taken leaves every client waiting for
it). Ports just below the ephemeral range are handed to no one unasked, so a probed one stays
free. Plain functions, no fixtures.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

_taken: set[int] = set()  # handed out by this process (its servers may not have bound them yet)


def ephemeral_range() -> tuple[int, int]:
    """The kernel's range of local ports for outgoing connections (Linux; IANA's elsewhere)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 49152, 65535


def free_port() -> int:
    """A port free on every interface, outside the ephemeral range, not handed out before."""
    low = ephemeral_range()[0]
    candidates = range(max(1024, low - 12000), low)
    for port in random.sample(candidates, len(candidates)):
        if port in _taken:
            continue
        with socket.socket() as s:
            try:
                s.bind(("0.0.0.0", port))
            except OSError:
                continue
        _taken.add(port)
        return port
    raise RuntimeError(f"no free port in {candidates}")
