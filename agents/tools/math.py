"""Math tool for the embedded math agent: exact answers with short steps.

Untrusted text is parsed by `math_parse` into a whitelisted IR in this
process (no SymPy needed here). The IR is sent to a small pool of pre-started
worker processes that build SymPy objects and compute; a worker that runs past
the time limit is killed and replaced, so no input can hang or exhaust the web
process. The public API is async and waits on workers from a thread, never on
the event loop.
"""
from __future__ import annotations

import asyncio
import atexit
import logging
import multiprocessing
import os
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from agents.tools.math_parse import MathError
from agents.tools.math_query import parse_query

__all__ = ["MathError", "MathResult", "solve_math", "shutdown_pool"]

log = logging.getLogger(__name__)

POOL_SIZE = max(1, int(os.environ.get("RELAY_MATH_WORKERS", "2")))
WORKER_MEMORY_BYTES = 1 << 30
# Recycle workers now and then: SymPy's caches only ever grow.
MAX_JOBS_PER_WORKER = 500
# Only the very first request pays for starting the pool (SymPy import ~1 s).
STARTUP_GRACE = 30.0
MAX_TIMEOUT = 60.0


@dataclass
class MathResult:
    operation: str
    expression: str
    result: str
    latex: str
    steps: list[str] = field(default_factory=list)
    verified: bool = False
    answer_text: str = ""


async def solve_math(query: str, *, timeout: float = 5.0) -> MathResult:
    """Answer a math question exactly. Raises MathError with a human message on any failure."""
    started = time.monotonic()
    try:
        job = parse_query(query)
    except MathError:
        raise
    except Exception:  # the parser must never surface a 500
        log.exception("math parser failed")
        raise MathError("I couldn't understand that as a math question.") from None
    limit = min(max(float(timeout), 0.1), MAX_TIMEOUT)
    pool = _get_pool()
    loop = asyncio.get_running_loop()
    reply = await loop.run_in_executor(_get_executor(), pool.run, job, limit, started)
    if not reply.get("ok"):
        raise MathError(reply.get("message") or "The calculation failed.")
    return MathResult(**reply["result"])


def shutdown_pool() -> None:
    """Kill all workers (tests, clean exit). The next request starts a fresh pool."""
    global _POOL
    with _POOL_LOCK:
        pool, _POOL = _POOL, None
    if pool is not None:
        pool.close()


# ---------------------------------------------------------------- worker pool

_POOL: _Pool | None = None
_POOL_LOCK = threading.Lock()
_EXECUTOR: ThreadPoolExecutor | None = None


def _get_pool() -> _Pool:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = _Pool(POOL_SIZE)
        return _POOL


def _get_executor() -> ThreadPoolExecutor:
    # A dedicated executor so slow math never starves the loop's default executor.
    global _EXECUTOR
    with _POOL_LOCK:
        if _EXECUTOR is None:
            _EXECUTOR = ThreadPoolExecutor(max_workers=4 * POOL_SIZE + 4, thread_name_prefix="relay-math")
        return _EXECUTOR


def _context():
    # Never plain fork: the web process runs an event loop and threads. The forkserver
    # preloads SymPy once, so replacing a killed worker takes milliseconds, not a second.
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        try:
            ctx.set_forkserver_preload(["sympy", "agents.tools.math"])
        except Exception:  # preload is only an optimisation
            log.debug("forkserver preload not set", exc_info=True)
        return ctx
    return multiprocessing.get_context("spawn")


class _Worker:
    def __init__(self, ctx):
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(child,), daemon=True, name="relay-math-worker")
        self.proc.start()
        child.close()
        self.jobs = 0
        self._killing = threading.Lock()
        self._killed = False

    def wait_ready(self, timeout: float) -> bool:
        try:
            return self.conn.poll(timeout) and self.conn.recv() == "ready"
        except (EOFError, OSError):
            return False

    def kill(self) -> None:
        # Once: a worker that failed to start is discarded by its spawning thread while a shutdown
        # may discard it too, and two threads closing one pipe close a file descriptor twice.
        with self._killing:
            if self._killed:
                return
            self._killed = True
        try:
            self.proc.kill()
            self.proc.join(2)
        except Exception:  # already gone
            log.debug("math worker kill failed", exc_info=True)
        self.conn.close()


class _Pool:
    def __init__(self, size: int):
        self.ctx = _context()
        self.idle: queue.Queue[_Worker] = queue.Queue()
        self.live: set[_Worker] = set()
        self.lock = threading.Lock()
        self.warm = threading.Event()
        self.closed = False
        for _ in range(size):
            self._replace()

    def _replace(self) -> None:
        # Started off-thread so a killed worker's replacement never delays the caller.
        threading.Thread(target=self._spawn, daemon=True, name="relay-math-spawn").start()

    def _spawn(self, attempt: int = 0) -> None:
        try:
            worker = _Worker(self.ctx)
        except Exception:
            log.exception("could not start a math worker")
            if attempt < 3 and not self.closed:
                time.sleep(1)
                self._spawn(attempt + 1)
            return
        with self.lock:
            if self.closed:
                worker.kill()
                return
            self.live.add(worker)
        if worker.wait_ready(STARTUP_GRACE):
            self.warm.set()
            self._release(worker)
        else:
            log.error("math worker failed to start")
            self._discard(worker, replace=attempt < 3)

    def _release(self, worker: _Worker) -> None:
        if self.closed:
            self._discard(worker, replace=False)
        else:
            self.idle.put(worker)

    def _discard(self, worker: _Worker, replace: bool = True) -> None:
        with self.lock:
            self.live.discard(worker)
        worker.kill()
        if replace and not self.closed:
            self._replace()

    def run(self, job: dict, timeout: float, started: float) -> dict:
        """Blocking: runs on an executor thread. Returns the worker's reply dict."""
        was_warm = self.warm.is_set()
        wait = timeout - (time.monotonic() - started) + (0 if was_warm else STARTUP_GRACE)
        try:
            worker = self.idle.get(timeout=max(wait, 0.01))
        except queue.Empty:
            raise MathError("The math engine is busy right now; please try again in a moment.") from None
        budget = timeout - (time.monotonic() - started) if was_warm else timeout
        try:
            worker.conn.send(job)
            reply = worker.conn.recv() if worker.conn.poll(max(budget, 0.01)) else None
        except (EOFError, OSError):
            self._discard(worker)
            raise MathError("The calculation ran out of resources and was stopped.") from None
        if reply is None:
            self._discard(worker)
            raise MathError(f"The calculation took longer than {timeout:g} seconds and was stopped.")
        worker.jobs += 1
        if worker.jobs >= MAX_JOBS_PER_WORKER:
            self._discard(worker)
        else:
            self._release(worker)
        return reply

    def close(self) -> None:
        self.closed = True
        with self.lock:
            workers = list(self.live)
        for worker in workers:
            self._discard(worker, replace=False)


atexit.register(shutdown_pool)


def _worker_main(conn) -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C belongs to the parent
    try:
        import resource

        _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        if hard == resource.RLIM_INFINITY or hard > WORKER_MEMORY_BYTES:
            resource.setrlimit(resource.RLIMIT_AS, (WORKER_MEMORY_BYTES, hard))
    except (ImportError, ValueError, OSError):
        pass
    import sys

    import sympy  # noqa: F401 - pay the import before announcing "ready"

    from agents.tools.math_ops import MAX_RESULT_CHARS, run_job

    # Results are already capped at ~10^5 digits; Python's default str() cap is 4300.
    sys.set_int_max_str_digits(MAX_RESULT_CHARS)

    conn.send("ready")
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return
        if job is None:
            return
        conn.send(run_job(job))
