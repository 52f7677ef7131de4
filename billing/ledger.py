"""The process's budget ledger (`get_ledger`): Redis when settings.REDIS_URL is set, else in-process.

The interface, its rules and the in-process ledger are in billing.ledger_base, the Redis one in
billing.ledger_redis; callers import from here.
"""

from __future__ import annotations

import threading

from django.conf import settings

from billing.ledger_base import (  # noqa: F401 (this module's API)
    RETENTION_SECONDS,
    Grant,
    HeldClosing,
    InProcessLedger,
    Ledger,
    LedgerUnavailable,
    OpenReservation,
)
from relay import redis_clients


def key_prefix() -> str:
    return redis_clients.key_prefix("ledger")


_ledger: Ledger | None = None
_ledger_lock = threading.Lock()


def get_ledger() -> Ledger:
    """The process's ledger: Redis when settings.REDIS_URL is set, else in-process."""
    global _ledger
    with _ledger_lock:
        if _ledger is None:
            if settings.REDIS_URL:
                from billing.ledger_redis import RedisLedger

                _ledger = RedisLedger(redis_clients.current(), key_prefix(), replicas=settings.RELAY_LEDGER_REPLICAS,
                                      wait_ms=settings.RELAY_LEDGER_WAIT_MS)
            else:
                _ledger = InProcessLedger()
        return _ledger
