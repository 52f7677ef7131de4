"""The process's live leases, renewed every LEASE_TTL/3 so that they outlive their TTL only while
this process is alive: an instance that dies stops renewing, and its leases expire on their own.

One renewal task per event loop (the Redis clients belong to their loop; tests and the live test
server run several loops); it ends when its loop has no live lease and starts again with the next.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import weakref
from collections.abc import Awaitable, Callable

logger = logging.getLogger(__name__)

Renew = Callable[[list[tuple[str, str]]], Awaitable[None]]


class LeaseKeeper:
    def __init__(self, renew: Renew, interval: float):
        self._renew = renew
        self.interval = interval
        self._lock = threading.Lock()
        self._leases: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # loop -> {lease: key}
        self._tasks: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # loop -> its renewal task

    def track(self, key: str, lease: str) -> None:
        loop = asyncio.get_running_loop()
        with self._lock:
            self._leases.setdefault(loop, {})[lease] = key
            task = self._tasks.get(loop)
            if task is None or task.done():
                self._tasks[loop] = loop.create_task(self._keep(), name="relay-router-leases")

    def forget(self, lease: str) -> None:
        with self._lock:
            for leases in self._leases.values():
                if leases.pop(lease, None) is not None:
                    return

    def live(self) -> list[tuple[str, str]]:
        """(key, lease) of this loop's live leases."""
        with self._lock:
            return [(key, lease) for lease, key in self._leases.get(asyncio.get_running_loop(), {}).items()]

    async def renew_now(self) -> None:
        leases = self.live()
        if leases:
            await self._renew(leases)

    async def _keep(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.interval)
            with self._lock:
                if not self._leases.get(loop):
                    self._tasks.pop(loop, None)  # under the lock: track() then starts a new task
                    return
            try:
                await self.renew_now()
            except Exception:  # a missed renewal costs nothing yet; the next one may succeed
                logger.warning("router: could not renew the in-flight leases", exc_info=True)
