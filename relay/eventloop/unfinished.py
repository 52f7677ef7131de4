"""What a request opened and must close however it ends: closed by the handler when nothing else did.

A model call's run is reserved by its view and closed by its stream. Between the two the client
may go: a disconnect cancels the request while the middleware returns the response or while its
headers are sent, and the stream is then never started, so nothing would close the run before
its reservation's TTL. Left to that, an attacker who hangs up at the right moment holds budget
that others share. So whoever opens such a thing registers its closer for the current request
(`register`) and calls the function it gets back once its own code has taken it over; the
handler (relay/eventloop/handler.py) runs, in a `request_scope()` around each HTTP request, the
closers still registered when the request ends.

Outside a request scope (a WebSocket consumer, a management command, a test calling the runner)
`register` does nothing: the caller's own code closes what it opened.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
from collections.abc import Awaitable, Callable

logger = logging.getLogger(__name__)

_closers: contextvars.ContextVar[list | None] = contextvars.ContextVar("relay_unfinished", default=None)


def _nothing() -> None:
    return None


@contextlib.asynccontextmanager
async def request_scope():
    """Run, when the block ends, the closers registered in it and not taken over (tasks it starts share them)."""
    closers: list[Callable[[], Awaitable]] = []
    reset = _closers.set(closers)
    try:
        yield
    finally:
        _closers.reset(reset)
        while closers:
            closer = closers.pop()
            try:
                await asyncio.shield(closer())
            except Exception:  # one closer's failure must not keep the others from running
                logger.exception("closing what a request left open failed")


def in_request() -> bool:
    """Whether this runs inside a request scope (an HTTP request the handler serves on this loop)."""
    return _closers.get() is not None


def register(closer: Callable[[], Awaitable]) -> Callable[[], None]:
    """Have the request's end await closer() unless the returned function is called first."""
    closers = _closers.get()
    if closers is None:
        return _nothing
    closers.append(closer)

    def taken_over() -> None:
        with contextlib.suppress(ValueError):
            closers.remove(closer)

    return taken_over
