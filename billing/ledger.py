"""The process's budget ledger (`get_ledger`): Redis when settings.REDIS_URL is set, else in-process.

The interface, its rules and the in-process ledger are in billing.ledger_base, the Redis one in
billing.ledger_redis; callers import from here.
"""

from __future__ import annotations

import os
import threading

from django.conf import settings

from billing.ledger_base import (  # noqa: F401 (this module's API)
    RETENTION_SECONDS,
    Grant,
    InProcessLedger,
    Ledger,
    LedgerUnavailable,
    OpenReservation,
)


def key_prefix() -> str:
    """Redis key prefix; the hash tag keeps every ledger key in one cluster slot, and the xdist
    worker suffix keeps parallel test workers apart (as CACHES' KEY_PREFIX does)."""
    base = os.environ.get("RELAY_CACHE_PREFIX", "relay") + os.environ.get("PYTEST_XDIST_WORKER", "")
    return "{" + base + "}:ledger:"


_ledger: Ledger | None = None
_ledger_lock = threading.Lock()


def get_ledger() -> Ledger:
    """The process's ledger: Redis when settings.REDIS_URL is set, else in-process."""
    global _ledger
    with _ledger_lock:
        if _ledger is None:
            if settings.REDIS_URL:
                from billing.ledger_redis import RedisLedger
                from relay import redis_clients

                _ledger = RedisLedger(redis_clients.current(), key_prefix(), replicas=settings.RELAY_LEDGER_REPLICAS,
                                      wait_ms=settings.RELAY_LEDGER_WAIT_MS)
            else:
                _ledger = InProcessLedger()
        return _ledger
