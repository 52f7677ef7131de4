"""How long a run may last, and how long its client may take no event.

A run must close, and settle, before its budget reservation expires and before the periodic job
takes an answer still `running` for a dead instance's (interrupted at zero cost, its late closing
then dropped while the ledger charged it). So the runner stops a run at the first limit
(`RunTimeout`, stored as `error` / `run_timeout`, billed for what it said), and every transport
(the SSE pump, the WebSocket send) closes the stream of a client that takes no event for the
second. Together with the upstream's longest silence between two chunks (its read timeout),
they keep the longest run inside the reservation's TTL.
"""

from __future__ import annotations

import time

from django.conf import settings

STALLED_CLIENT_SECONDS = 60  # a client that takes no event for this long is gone: its stream closes


class RunTimeout(Exception):
    """A run reached its deadline (agents.runner stops it)."""


def limits() -> tuple[float, float]:
    """(how long a run may last, how long its client may take no event), in seconds."""
    bound = min(settings.RELAY_BUDGET_RESERVATION_TTL, settings.RELAY_INTERRUPTED_AFTER_SECONDS)
    stall = min(STALLED_CLIENT_SECONDS, bound / 6)
    return bound - 3 * stall, stall


def now() -> float:
    """The clock run deadlines are read on (time.monotonic, as a run's `started`; tests move it)."""
    return time.monotonic()
