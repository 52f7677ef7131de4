"""asyncio.wait_for as Python 3.12 has it, on 3.11: a cancelled caller stays cancelled.

Python 3.11's wait_for runs the awaited coroutine as a task of its own, and when its caller is
cancelled in the turn that task finishes, it returns the result and drops the cancellation (the
CPython bug fixed in 3.12, which reimplemented wait_for on asyncio.timeout). redis-py writes every
command through wait_for when the client has a socket timeout, as Relay's clients do, so about one
cancellation in four that reached a task during a Redis call was lost: a run whose client hung up
went on calling tools and the model for nobody, and the SSE stream that cancelled it waited for
the whole run to end. `install()` (relay/__init__.py, before any library is used) puts 3.12's
wait_for in asyncio's place; on 3.12 and later it does nothing.
"""

from __future__ import annotations

import asyncio
import sys

_original = asyncio.wait_for


async def wait_for(fut, timeout):
    """`fut`'s result, or TimeoutError after `timeout` seconds (None: no limit); a cancel propagates."""
    if timeout is not None and timeout <= 0:
        return await _original(fut, timeout)  # cancels fut and waits for it; nothing is swallowed there
    async with asyncio.timeout(timeout):
        return await fut


def install() -> None:
    if sys.version_info < (3, 12):
        asyncio.wait_for = asyncio.tasks.wait_for = wait_for
