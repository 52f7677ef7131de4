"""Running sync (ORM) code from the async hot path, on one bounded pool of threads.

Why not Django's default, sync_to_async(thread_sensitive=True): it runs every such call of the
process on one shared thread, so requests queue behind each other (docs/design.md section 11). Why
not the loop's default executor: Django keeps one connection per thread, and a pool that grows
and shrinks leaks connections. This pool is bounded (RELAY_DB_THREADS) and its connections are
reused and aged out by CONN_MAX_AGE.

Tests that wrap each test in a transaction on the main thread set RELAY_DB_THREAD_SENSITIVE so
these calls see that transaction; live-server tests use the pool, as production does.
"""

import asyncio
import contextvars
import functools
import threading
from concurrent.futures import ThreadPoolExecutor, wait

from asgiref.sync import SyncToAsync, sync_to_async
from django.conf import settings
from django.db import close_old_connections, connections

_lock = threading.Lock()
_executor: ThreadPoolExecutor | None = None


def _pool() -> ThreadPoolExecutor:
    global _executor
    with _lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=settings.RELAY_DB_THREADS, thread_name_prefix="relay-db")
        return _executor


def _fresh(fn, *args, **kwargs):
    close_old_connections()  # as at the start of a request: drop broken or too-old connections
    return fn(*args, **kwargs)


async def run_db(fn, *args, **kwargs):
    """Run fn(*args, **kwargs) (sync ORM code) without blocking the event loop."""
    if getattr(settings, "RELAY_DB_THREAD_SENSITIVE", False):
        return await sync_to_async(fn, thread_sensitive=True)(*args, **kwargs)
    # The loop's executor hand-off, not asgiref's SyncToAsync: the same thread and context copy at
    # a fraction of its per-call cost (it also copies context changes back, which the ORM calls
    # here never make), and this path runs several times per model request.
    context = contextvars.copy_context()
    call = functools.partial(context.run, _fresh, fn, *args, **kwargs)
    return await asyncio.get_running_loop().run_in_executor(_pool(), call)


def db(fn):
    """`await db(fn)(*args)`: the decorator form of run_db."""

    @functools.wraps(fn)
    async def run(*args, **kwargs):
        return await run_db(fn, *args, **kwargs)

    return run


def _close_shared_sync_thread() -> None:
    """asgiref runs thread-sensitive calls made outside a request's context (Channels'
    database_sync_to_async, run_db under RELAY_DB_THREAD_SENSITIVE, from a loop of their own) on one
    process-wide thread; nothing ages its connection out unless another such call comes, so it
    outlived the pool (and kept a test database from dropping)."""
    try:
        SyncToAsync.single_thread_executor.submit(connections.close_all).result(timeout=10)
    except TimeoutError:
        pass  # that thread is stuck in a call: its connection closes when the process exits


def close_db_threads() -> None:
    """Close every pool thread's connections and stop the pool, the loops' own connections
    (relay.eventloop.pg) and asgiref's shared sync thread's (shutdown, test teardown)."""
    global _executor
    from relay.eventloop import pg

    pg.close_all()
    _close_shared_sync_thread()
    with _lock:
        pool, _executor = _executor, None
    if pool is None:
        return
    size = pool._max_workers
    barrier = threading.Barrier(size, timeout=10)

    def close():
        connections.close_all()
        try:
            barrier.wait()  # every task waits for the others, so each runs on its own thread
        except threading.BrokenBarrierError:
            pass

    wait([pool.submit(close) for _ in range(size)])
    pool.shutdown(wait=True)
