"""Work that finishes after the answer: tasks the serving loop keeps and drains before it stops.

A model call's closing transaction may run after the client has its last bytes (agents.runner),
but only on a loop that outlives the request: the production server's (`relay.serve` marks it
with `serve_here` when it starts and awaits `drain` when it stops). Anywhere else (the test
client, a Celery task's `async_to_sync`, the development server) the loop may close as soon as
the request returns and would cancel the work, so `later` declines and the caller awaits it.
The tasks are held here until they end, so none is garbage-collected half-way.
"""

from __future__ import annotations

import asyncio
import logging
import weakref

logger = logging.getLogger(__name__)

_tasks: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # serving loop -> its pending tasks


def serve_here() -> None:
    """Mark the running loop as one that outlives its requests and drains before it stops."""
    _tasks.setdefault(asyncio.get_running_loop(), set())


def later(work, name: str = "", *, key: str | None = None) -> bool:
    """Run the coroutine `work` after the answer if this loop drains; False: the caller must await it.

    `key` names what the work completes (a conversation): `settled(key)` waits for it.
    """
    try:
        pending = _tasks.get(asyncio.get_running_loop())
    except RuntimeError:
        pending = None
    if pending is None:
        return False
    task = asyncio.get_running_loop().create_task(work, name=name or None)
    task.relay_key = key
    pending.add(task)
    task.add_done_callback(_finished(pending))
    return True


async def settled(key: str) -> None:
    """Wait for this loop's pending work on `key` (a conversation's last closing: the next turn reads
    its answer as history). Its failure is not the caller's: the work logs it and recovery covers it."""
    waiting = [task for task in _tasks.get(asyncio.get_running_loop(), ()) if task.relay_key == key]
    if waiting:
        await asyncio.wait(waiting)


def _finished(pending: set):
    def done(task: asyncio.Task) -> None:
        pending.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("work after an answer failed (%s)", task.get_name(), exc_info=task.exception())

    return done


def pending() -> int:
    """How many tasks of this loop are still running."""
    return len(_tasks.get(asyncio.get_running_loop(), ()))


async def drain(timeout: float) -> int:
    """Wait for this loop's tasks (and those they start) for up to `timeout` s; cancel what is left.

    Returns how many were cancelled: their work is left to the recovery that covers it.
    """
    tasks = _tasks.get(asyncio.get_running_loop(), set())
    deadline = asyncio.get_running_loop().time() + timeout
    while tasks:
        left = deadline - asyncio.get_running_loop().time()
        if left <= 0:
            break
        await asyncio.wait(list(tasks), timeout=left)
    stuck = list(tasks)
    for task in stuck:
        task.cancel()
    if stuck:
        logger.warning("%d task(s) after answers did not finish within %.0f s: cancelled", len(stuck), timeout)
        await asyncio.gather(*stuck, return_exceptions=True)
    return len(stuck)
