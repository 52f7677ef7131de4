"""Live Relay instances for tests about state shared between processes.

With PostgreSQL and Redis (the production configuration) `instances(n)` starts n uvicorn
processes on the test database, cache and ledger; in the embedded mode, whose ledger and cache
live in one process by design, one in-process server stands in for all of them.
"""

from __future__ import annotations

import contextlib

from django.conf import settings

from tests.conftest import ASGIServer


def production_services() -> bool:
    return settings.DATABASES["default"]["ENGINE"].endswith("postgresql") and bool(settings.REDIS_URL)


@contextlib.contextmanager
def instances(count: int = 2, **env_overrides):
    """URLs of `count` Relay processes (or of one in-process server in the embedded mode)."""
    from tests.billing.test_live_budgets import start_workers

    if production_services():
        workers = start_workers(count, **env_overrides)
        try:
            yield [worker.url for worker in workers]
        finally:
            for worker in workers:
                worker.stop()
        return
    server = ASGIServer().start()
    try:
        yield [server.url]
    finally:
        server.stop()
