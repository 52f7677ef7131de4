"""Liveness and readiness for load balancers and orchestrators."""

import logging
import threading
from collections.abc import Awaitable, Callable

from django.conf import settings
from django.db import connection
from django.http import JsonResponse

_draining = threading.Event()


def start_draining() -> None:
    """Called on SIGTERM: from now on /readyz answers 503 so the balancer stops sending work."""
    _draining.set()


# Here, not in relay/serve.py: that module runs as __main__, so the apps would register with a copy.
_closers: list[Callable[[], Awaitable[None]]] = []


def on_shutdown(close: Callable[[], Awaitable[None]]) -> None:
    """Have `close` run on the server's loop once the drain is over (apps register what they hold
    open: pooled upstream connections, otherwise reported unclosed as the process exits)."""
    if close not in _closers:
        _closers.append(close)


async def close_held_open() -> None:
    for close in _closers:
        try:
            await close()
        except Exception:  # one closer's trouble must not keep the others from running
            logging.getLogger(__name__).exception("closing %r at shutdown failed", close)


def is_draining() -> bool:
    return _draining.is_set()


def healthz(request):
    return JsonResponse({"status": "ok"})


def _check_database() -> str | None:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except Exception as exc:  # any driver error means not ready
        return f"database: {exc.__class__.__name__}"
    return None


_redis_client = None


def _check_redis() -> str | None:
    global _redis_client
    if not settings.REDIS_URL:
        return None
    import redis

    from relay import redis_clients

    try:
        if _redis_client is None:  # one pool per process (with Sentinel: asks it where the primary is)
            _redis_client = redis_clients.sync_client(socket_connect_timeout=1, socket_timeout=1)
        _redis_client.ping()
    except redis.RedisError as exc:
        return f"redis: {exc.__class__.__name__}"
    return None


def readyz(request):
    failures = [failure for failure in (_check_database(), _check_redis()) if failure]
    if is_draining():
        failures.insert(0, "draining: this instance is shutting down")
    checks = {"database": "ok", "redis": "ok" if settings.REDIS_URL else "not configured"}
    for failure in failures:
        name = failure.split(":", 1)[0]
        checks[name] = failure.split(": ", 1)[1]
    if failures:
        return JsonResponse(
            {"status": "unavailable", "checks": checks,
             "error": {"code": "not_ready", "message": "; ".join(failures)}},
            status=503,
        )
    return JsonResponse({"status": "ok", "checks": checks})
