"""Redis or PostgreSQL unreachable: answer 503 with the error envelope, never a 500.

Relay fails closed when a service it depends on is down (docs/design.md sections 7 and 9): the
budget ledger already refuses with 503 `ledger_unavailable`; everything else that touches
Redis (key cache, sessions, request rate limits) or the database raises the driver's
connection error, which this module maps to 503 `service_unavailable`. Nothing is retried
here: the next request opens a fresh connection (redis-py reconnects by itself; Django
replaces a broken database connection thanks to CONN_HEALTH_CHECKS), so service returns as
soon as the service does.
"""

from __future__ import annotations

import logging

from django.db import InterfaceError as DjangoInterfaceError
from django.db import OperationalError as DjangoOperationalError

from relay.api.envelope import error_response
from relay.eventloop.middleware import DualModeMiddleware

logger = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 2


def _fault_types() -> tuple[type[BaseException], ...]:
    import redis.exceptions

    types: list[type[BaseException]] = [
        DjangoOperationalError, DjangoInterfaceError,
        redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
    ]
    try:  # django-redis wraps driver errors in its own exception
        from django_redis.exceptions import ConnectionInterrupted

        types.append(ConnectionInterrupted)
    except ImportError:  # pragma: no cover - django-redis is a runtime dependency
        pass
    return tuple(types)


_FAULTS = _fault_types()


def is_service_fault(exc: BaseException | None) -> bool:
    """Is this (or what it was raised from) a lost connection to Redis or the database?"""
    seen = 0
    while exc is not None and seen < 5:
        if isinstance(exc, _FAULTS):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def fault_response(exc: BaseException):
    service = "database" if isinstance(exc, (DjangoOperationalError, DjangoInterfaceError)) else "redis"
    logger.warning("503: %s unreachable (%s: %s)", service, exc.__class__.__name__, exc)
    response = error_response(503, "service_unavailable",
                              "A service Relay depends on is unavailable; try again shortly.")
    response["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response


class ServiceFaultMiddleware(DualModeMiddleware):
    """Turns a view's lost-connection error into the 503 envelope (see module docstring).

    Errors raised in other middleware never reach process_exception; relay.api.errors.handler500
    maps those with the same function.
    """

    def __call__(self, request):
        # Only process_exception matters here: the rest of the chain is handed back as it is (its
        # response, or under ASGI its coroutine), without a frame of this middleware around it.
        return self.get_response(request)

    def process_exception(self, request, exception):
        if is_service_fault(exception):
            return fault_response(exception)
        return None
