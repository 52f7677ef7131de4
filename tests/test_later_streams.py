"""Work held behind answers and streams (relay.eventloop.later): a stream's first event ends its
mark, so what waits goes while it sends the rest; its own closing, held while it still sends,
waits for a quiet moment counted from its end. The events asserted are the order of things, not
their timing."""

from __future__ import annotations

import asyncio

from relay.eventloop import later
from tests.support.later_gate import serving as _serving
from tests.support.later_gate import turns as _turns
from tests.support.later_gate import until as _until


async def _stream_holding_its_closing(events: list, sending) -> None:
    """A stream as the ASGI handler and the runner mark it: its first token, its closing held as the
    model's answer ends, the rest sent (`await sending()`), then its response's end."""
    ended = later.answering()
    later.answer_started()

    async def closing():
        events.append("closing")

    assert later.later(closing(), behind_answers=True)
    await sending()
    events.append("stream ended")
    ended()


def test_a_streams_own_closing_waits_for_a_quiet_moment_counted_from_its_end(hold):
    """Held while the stream still sends its end (the settle, the last events), its closing's quiet
    moment begins only once the response has ended, when the client can send its next request,
    which then cuts it short."""
    hold(quiet_ms=1)
    events = []

    async def scenario():
        # its own context, as each request's; ten quiet moments' worth of sending the rest
        await asyncio.create_task(_stream_holding_its_closing(events, lambda: asyncio.sleep(0.01)))
        following = later.answering()  # the client's next request, within the quiet moment
        await asyncio.sleep(0.01)
        events.append("next answered")
        following()
        await asyncio.wait_for(_until(lambda: "closing" in events), 10)
        assert await later.drain(10) == 0

    _serving(scenario)
    assert events == ["stream ended", "next answered", "closing"]


def test_a_streams_own_closing_goes_after_the_quiet_moment_once_it_ended(hold):
    """With no next request, the stream's end starts the quiet moment: the hold (a minute) plays no part."""
    hold(quiet_ms=1)
    events = []

    async def scenario():
        await asyncio.create_task(_stream_holding_its_closing(events, _turns))
        await asyncio.wait_for(_until(lambda: "closing" in events), 10)
        assert await later.drain(10) == 0

    _serving(scenario)
    assert events == ["stream ended", "closing"]


def test_work_held_by_another_request_does_not_wait_for_a_stream_sending_its_rest(hold):
    """Only the stream's own closing counts its quiet moment from the stream's end."""
    hold(quiet_ms=1)
    events = []

    async def closing():
        events.append("closing")

    async def stream(release: asyncio.Event):
        ended = later.answering()
        later.answer_started()
        await release.wait()
        events.append("stream ended")
        ended()

    async def scenario():
        release = asyncio.Event()
        task = asyncio.create_task(stream(release))
        await _turns()
        assert later.later(closing(), behind_answers=True)  # another request's closing, no one before its answer
        await asyncio.wait_for(_until(lambda: "closing" in events), 10)
        release.set()
        await task
        assert await later.drain(10) == 0

    _serving(scenario)
    assert events == ["closing", "stream ended"]


def test_a_streams_first_event_ends_its_mark(hold):
    events = []

    async def closing():
        events.append("closing")

    async def request():  # the handler's mark, then the stream's first token (agents.api.sse)
        answered = later.answering()
        await _turns()
        events.append("first token")
        later.answer_started()
        await _turns(20)
        events.append("stream ends")
        answered()

    async def scenario():
        task = asyncio.create_task(request())  # its own context, as each request's
        await asyncio.sleep(0)
        assert later.later(closing(), behind_answers=True)
        await task
        assert await later.drain(10) == 0

    _serving(scenario)
    assert events == ["first token", "closing", "stream ends"]
