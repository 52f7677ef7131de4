"""Liveness and readiness for load balancers and orchestrators."""

import threading

from django.conf import settings
from django.db import connection
from django.http import JsonResponse

_draining = threading.Event()


def start_draining() -> None:
    """Called on SIGTERM: from now on /readyz answers 503 so the balancer stops sending work."""
    _draining.set()


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


def _check_redis() -> str | None:
    if not settings.REDIS_URL:
        return None
    import redis

    try:
        redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=1, socket_timeout=1).ping()
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
