"""What two concurrent requests on one event loop get from a cache handler (relay/eventloop/caches.py)."""

from __future__ import annotations

import asyncio
import contextvars


def backends_of_two_requests(handler) -> tuple:
    """The default cache backend as two concurrent requests on one event loop see it."""

    async def backend():
        return handler["default"]

    async def two_requests():
        return await asyncio.gather(backend(), backend())

    # A server's requests start from a context where nothing touched the cache (relay.asgi does not).
    return tuple(contextvars.Context().run(asyncio.run, two_requests()))
