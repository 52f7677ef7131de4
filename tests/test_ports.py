"""tests/support/ports.py: a cluster's ports stay out of the range outgoing connections take theirs from."""

from __future__ import annotations

import socket

from tests.support.ports import ephemeral_ports, free_port_run


def test_a_run_of_ports_is_free_and_below_the_ephemeral_range():
    low, _high = ephemeral_ports()
    base = free_port_run(3)
    assert base + 3 <= low  # an instance's port cannot be taken by an outgoing connection while it restarts
    socks = [socket.socket() for _ in range(3)]
    try:
        for offset, sock in enumerate(socks):
            sock.bind(("127.0.0.1", base + offset))
    finally:
        for sock in socks:
            sock.close()
