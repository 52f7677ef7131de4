"""Periodic work of the cluster, run by Celery beat (settings.CELERY_BEAT_SCHEDULE).

The job bodies belong to the apps whose data they touch (agents/jobs.py, billing/jobs.py,
audit/jobs.py, imported by their AppConfig.ready); this module only gives them their Celery task
name and the once-per-cluster lock, so relay/ stays free of app imports.

Beat runs once per cluster, but a second beat started by mistake (or a task retried while the
first run is still going) must not double the work: each task takes a django-redis lock first
and skips its turn when another process holds it. In the embedded mode the cache is in-process
and the lock is a plain one.
"""

from __future__ import annotations

import contextlib
import functools
import threading

from celery import shared_task
from django.core.cache import cache

_local_locks: dict[str, threading.Lock] = {}


@contextlib.contextmanager
def single_writer(name: str, timeout: int = 300):
    """Yields True when this process holds the cluster-wide lock `name`, False when another does."""
    if hasattr(cache, "lock"):  # django-redis
        lock = cache.lock(f"periodic:{name}", timeout=timeout)
    else:
        lock = _local_locks.setdefault(name, threading.Lock())
    acquired = lock.acquire(blocking=False)
    try:
        yield acquired
    finally:
        if acquired:
            with contextlib.suppress(Exception):  # an expired Redis lock is gone already
                lock.release()


def register_job(name: str, body=None, *, lock: str | None = None, timeout: int = 300, skipped=0):
    """Register `body` as the Celery task `relay.<name>` (the name beat's schedule uses); returns the task.

    With `lock`, the body runs only in the process holding that cluster-wide lock and every other
    caller gets `skipped` at once. Usable as a decorator: `@register_job("name", lock="...")`.
    """
    if body is None:
        return functools.partial(register_job, name, lock=lock, timeout=timeout, skipped=skipped)

    @functools.wraps(body)
    def run(*args, **kwargs):
        if lock is None:
            return body(*args, **kwargs)
        with single_writer(lock, timeout=timeout) as mine:
            if not mine:
                return dict(skipped) if isinstance(skipped, dict) else skipped
            return body(*args, **kwargs)

    return shared_task(name=f"relay.{name}", ignore_result=True)(run)
