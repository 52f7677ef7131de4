"""The one server-sent-events path: /api/v1/stream and /v1/chat/completions with stream=true.

Both answer a prepared run with the same generator, so both get the keep-alive comments while a
tool or the model is slow and both count in `active_sessions` while open; only the framing of
the run's events differs (Relay's own events, or OpenAI's chunks ending with `data: [DONE]`).
The run itself stores its answer however the stream ends, also when the client disconnects
(the server closes this generator, which cancels the pending step: agents.runner.stream).
"""

from __future__ import annotations

import asyncio
import contextlib
import json

from django.http import StreamingHttpResponse

from agents import runner
from relay.observability import metrics

HEARTBEAT_SECONDS = 15  # read at each stream's start, so tests can shorten it
HEARTBEAT = b": heartbeat\n\n"


def data(payload) -> bytes:
    """One `data:` event carrying `payload` as JSON."""
    return b"data: " + json.dumps(payload, ensure_ascii=False).encode() + b"\n\n"


class RelayFraming:
    """Relay's own protocol (docs/design.md section 6): one `data:` event per run event, nothing around them.

    A framing is what the two protocols differ in: `opening` goes first, `frame(event)` turns each
    run event into bytes (b"" sends nothing) and `closing` ends a stream that ran to its end.
    """

    opening = b""
    closing = b""

    def frame(self, event: dict) -> bytes:
        return data(event)


async def with_heartbeats(source, interval: float):
    """Pass events through, yielding None whenever `interval` seconds pass without one.

    The pending step keeps running across heartbeats (it is never cancelled by the timer), so a
    slow tool or model is not interrupted by the keep-alive.
    """
    iterator = aiter(source)
    step = asyncio.ensure_future(anext(iterator))
    try:
        while True:
            done, _ = await asyncio.wait({step}, timeout=interval)
            if not done:
                yield None
                continue
            try:
                event = step.result()
            except StopAsyncIteration:
                return
            yield event
            step = asyncio.ensure_future(anext(iterator))
    finally:
        if not step.done():
            step.cancel()
            with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                await step
        await iterator.aclose()


async def sse_events(run: runner.PreparedRun, framing):
    """The run's events as SSE bytes in `framing`, with heartbeats, counted as an open session."""
    with metrics.session_open():
        if framing.opening:
            yield framing.opening
        async for event in with_heartbeats(runner.stream(run), HEARTBEAT_SECONDS):
            if event is None:
                yield HEARTBEAT
            elif frame := framing.frame(event):
                yield frame
        if framing.closing:
            yield framing.closing


def event_stream(run: runner.PreparedRun, framing) -> StreamingHttpResponse:
    """The streaming response of a run: no caching, and no proxy buffering (nginx honours X-Accel-Buffering)."""
    response = StreamingHttpResponse(sse_events(run, framing), content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    return response
