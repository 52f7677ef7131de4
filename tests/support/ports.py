"""Free TCP ports on 127.0.0.1 for the servers tests and benchmarks start (no Django: bench/ imports it)."""

from __future__ import annotations

import socket


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


def free_port_run(count: int) -> int:
    """The first of `count` consecutive free ports (a cluster's instances)."""
    for _ in range(50):
        base = free_port()
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
