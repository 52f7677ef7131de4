"""Free TCP ports on 127.0.0.1 for the servers tests and benchmarks start (no Django: bench/ imports it)."""

from __future__ import annotations

import random
import socket
from pathlib import Path


def bound_socket(backlog: int | None = None) -> socket.socket:
    """A socket bound to a free port and kept open: hand it to the server, so the port cannot be taken
    between choosing it and listening on it. With `backlog`, already listening."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    if backlog is not None:
        sock.listen(backlog)
    return sock


def free_port() -> int:
    """A port free now, for a server in another process that binds it itself (or a port nobody listens on)."""
    with bound_socket() as sock:
        return sock.getsockname()[1]


def ephemeral_ports() -> tuple[int, int]:
    """The range the kernel takes outgoing connections' local ports from (Linux's default if unreadable)."""
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        return 32768, 60999
    return low, high


def free_port_run(count: int) -> int:
    """The first of `count` consecutive free ports (a cluster's instances), below the ephemeral range.

    A rolling restart starts each instance again on its own port. A port in the ephemeral range is
    free for anyone while its instance is down, and any outgoing connection on the machine (the
    load, nginx to the other instance, a client to Redis) may take it as its local port, so the
    restarted instance failed to bind it (EADDRINUSE, seen in CI). Below the range, only a server
    that asks for the port by number can take it."""
    low, _high = ephemeral_ports()
    chooser = random.SystemRandom()
    for _ in range(200):
        base = chooser.randrange(10000, low - count) if low - count > 10000 else free_port()
        if base + count > 65000:
            continue
        socks = [socket.socket() for _ in range(count)]
        try:
            for offset, sock in enumerate(socks):
                sock.bind(("127.0.0.1", base + offset))
            return base
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise RuntimeError(f"no run of {count} free ports found")
