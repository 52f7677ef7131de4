"""The one server-sent-events path: /api/v1/stream and /v1/chat/completions with stream=true.

Both answer a prepared run with the same generator, so both get the keep-alive comments while a
tool or the model is slow and both count in `active_sessions` while open; only the framing of
the run's events differs (Relay's own events, or OpenAI's chunks ending with `data: [DONE]`).
The run itself stores its answer however the stream ends, also when the client disconnects
(the server closes this generator, which cancels the pending step: agents.runner.stream).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Callable

from django.http import StreamingHttpResponse

from agents import deadlines, events, runner
from relay.eventloop import later, unfinished
from relay.observability import metrics

HEARTBEAT_SECONDS = 15  # read at each stream's start, so tests can shorten it
HEARTBEAT = b": heartbeat\n\n"
# Turns of the loop for the pump to send the model call before the response goes out, its deployment
# acquired and its connection open: its own task's first, aiohttp's writing the request (a task of
# its own on Python 3.11), and one to spare.
_ASKING_TURNS = 3


def data(payload) -> bytes:
    """One `data:` event carrying `payload` as JSON."""
    return b"data: " + events.utf8_json(payload) + b"\n\n"


class RelayFraming:
    """Relay's own protocol (docs/design.md section 6): one `data:` event per run event, nothing around them.

    A framing is what the two protocols differ in: `opening` goes first, `frame(event)` turns each
    run event into bytes (b"" sends nothing) and `closing` ends a stream that ran to its end.
    """

    opening = b""
    closing = b""

    def frame(self, event: dict) -> bytes:
        return data(event)


async def with_heartbeats(source, interval: float, stall: float | None = None):
    """Pass events through, yielding None whenever `interval` seconds pass without one.

    The pending step keeps running across heartbeats (it is never cancelled by the timer), so a
    slow tool or model is not interrupted by the keep-alive. Closing this generator cancels the
    pending step and closes the source. If the consumer takes no event for `stall` seconds (its
    client stopped reading, so the server's send waits), the source is closed then: a run ends
    while its reservation holds, not whenever the client wakes.
    """
    pump = _Pump(source, interval, stall)
    try:
        while (item := await pump.next()) is not _END:
            yield item
    finally:
        await pump.close()


_END = object()


class _Pump:
    """Fetches the source's events in one task for the whole stream, at most one step ahead (after
    its `head_start`: that many first events are fetched without waiting for the consumer).

    Per event this costs one future, and only when the consumer is already waiting: the task
    starts on the next event as soon as it handed one over, so the consumer never has to wake
    it, and it waits only when the consumer has not yet taken what it fetched (backpressure).
    One timer, moved on lazily, wakes the consumer with a heartbeat once `interval` passed
    since it started waiting.
    """

    def __init__(self, source, interval: float, stall: float | None = None, head_start: int = 0):
        self.loop = asyncio.get_running_loop()
        self.iterator, self.interval, self.stall = aiter(source), interval, stall
        # (event, error) fetched while the consumer was away (sending, or a heartbeat): one at most,
        # but for the first `head_start` events, which are fetched without waiting for the consumer.
        self.ready = collections.deque()
        self.head_start = head_start
        self.taken = None  # the task's wait until the consumer took all of `ready`
        self.answer = None  # what the consumer waits on: (event, error), or (None, None) for a heartbeat
        self.deadline, self.timer = 0.0, None
        self.stalled = False  # the source is closed, or being closed, for a client that took nothing
        self.task = self.loop.create_task(self._fetch())

    async def _fetch(self) -> None:
        while True:
            try:
                result = (await anext(self.iterator), None)
            except StopAsyncIteration:
                result = (_END, None)
            except Exception as error:  # noqa: BLE001 (raised in the consumer, as the source raised it)
                result = (None, error)
            last = result[0] is _END or result[1] is not None
            ahead = self.head_start > 0
            self.head_start -= ahead
            if self.answer is not None and not self.answer.done():
                self.answer.set_result(result)
            else:
                self.ready.append(result)
                if not (last or ahead):
                    self.taken = self.loop.create_future()
                    try:
                        async with asyncio.timeout(self.stall):
                            await self.taken
                    except TimeoutError:  # the consumer is stuck in a send: its client is gone
                        self.stalled = True
                        await self.iterator.aclose()
                        return
            if last:
                return

    async def next(self):
        if self.ready:
            event, error = self.ready.popleft()
            if not self.ready and self.taken is not None and not self.taken.done():
                self.taken.set_result(None)
        elif self.stalled:  # the end, once the run is closed: no heartbeat for a client that is gone
            await self.task
            return _END
        else:
            self.answer = self.loop.create_future()
            self.deadline = self.loop.time() + self.interval
            if self.timer is None:
                self.timer = self.loop.call_at(self.deadline, self._tick)
            event, error = await self.answer
        if error is not None:
            raise error
        return event

    def _tick(self) -> None:
        self.timer = None
        if self.answer is None or self.answer.done():
            return  # not waiting: the next wait arms the timer again
        if self.loop.time() >= self.deadline:
            self.answer.set_result((None, None))
        else:
            self.timer = self.loop.call_at(self.deadline, self._tick)

    async def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        if not self.task.done():
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                await self.task
        await self.iterator.aclose()


def fetching(run: runner.PreparedRun) -> tuple[_Pump, Callable[[], None]]:
    """The run's events, fetched from now on: its `start` event and then, without waiting for the
    consumer, its first answer, so the model is asked while the response's headers go out rather
    than after. (The pump, and what its consumer calls once it has taken the pump over; until
    then the request's end closes it, relay.eventloop.unfinished: a client gone before the stream
    starts leaves no run going.)"""
    pump = _Pump(runner.stream(run), HEARTBEAT_SECONDS, deadlines.limits()[1], head_start=1)
    return pump, unfinished.register(pump.close)


async def sse_events(run: runner.PreparedRun, framing, started: tuple | None = None):
    """The run's events as SSE bytes in `framing`, with heartbeats, counted as an open session.
    `started`: what `fetching(run)` returned (None: the events are fetched from the first step)."""
    with metrics.session_open():
        if framing.opening:
            yield framing.opening
        # Fetched only past the opening: outside a request's scope (`started` None), a consumer that
        # closed this generator at that yield would otherwise leave a pump running that nobody closes.
        pump, take_over = started or fetching(run)
        take_over()
        answering = True
        try:
            while (event := await pump.next()) is not _END:
                if event is None:
                    yield HEARTBEAT
                elif frame := framing.frame(event):
                    if answering and event["type"] != "start":  # `start` is sent before the model is asked
                        answering = False
                        # what waits behind answers (a closing's commit) need not wait for the rest
                        later.answer_started()
                    yield frame
        finally:
            await pump.close()
        if framing.closing:
            yield framing.closing


class EventStreamResponse(StreamingHttpResponse):
    """A streaming response that closes its events when the server stops sending them.

    Django's own __aiter__ hands the events on through generators of its own (and a middleware may
    add one: audit's binds its context around each chunk) and closes only the outermost, so the
    run's generator is closed by the garbage collector, whenever it runs: if the client's hang-up
    lands while a send waits (a full socket buffer), the run would go on, holding its reservation
    and calling the model, for nobody. Here the chain is consumed as Django and the middleware
    built it, and the server's close then reaches the run's events too.
    """

    def __init__(self, events, **kwargs):
        super().__init__(events, **kwargs)
        self.events = events

    async def __aiter__(self):
        try:
            async with contextlib.aclosing(super().__aiter__()) as parts:
                async for part in parts:
                    yield part
        finally:
            await self.events.aclose()  # a no-op when they ran to their end


async def event_stream(run: runner.PreparedRun, framing) -> StreamingHttpResponse:
    """The streaming response of a run: no caching, and no proxy buffering (nginx honours X-Accel-Buffering).

    Served by Relay's handler, its events start before it is returned: a few turns of the loop here
    let the run's pump ask the model, which then thinks while the middleware and the server send the
    response's headers (an upstream's time to first token is tens of milliseconds or more: starting
    it first made the first token 0.3-0.8 ms sooner on this 2-core machine, bench/README.md).
    Elsewhere (Django's test client runs the view and reads the response in different loops, and
    nothing would close a response never read) they start when it is read.
    """
    started = None
    if unfinished.in_request():
        started = fetching(run)
        if run.ahead is not None:  # the model is asked once its deployment is acquired (overlapping the opening)
            await run.ahead.settled()
        for _ in range(_ASKING_TURNS):
            await asyncio.sleep(0)
    response = EventStreamResponse(sse_events(run, framing, started), content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    return response
