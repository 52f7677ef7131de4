"""Idle SSE streams get comment heartbeats, and a heartbeat never interrupts the slow step."""

import asyncio

import pytest

from agents.api.sse import HEARTBEAT_SECONDS, with_heartbeats


@pytest.mark.asyncio
async def test_heartbeats_fill_silences_without_cancelling_the_pending_event():
    released = asyncio.Event()
    finished = []

    async def slow_tool_then_answer():
        yield {"type": "start"}
        await released.wait()  # a tool that takes a while
        yield {"type": "token", "content": "done"}
        finished.append(True)

    seen = []
    async for item in with_heartbeats(slow_tool_then_answer(), interval=0.02):
        seen.append(item)
        if seen.count(None) == 3:
            released.set()  # three heartbeats went out while the tool ran; now let it finish
    assert seen[0] == {"type": "start"} and seen[-1] == {"type": "token", "content": "done"}
    assert seen.count(None) >= 3 and finished == [True]


@pytest.mark.asyncio
async def test_closing_the_stream_cancels_the_pending_step():
    cancelled = asyncio.Event()

    async def never_answers():
        try:
            await asyncio.Event().wait()
            yield "unreachable"
        finally:
            cancelled.set()

    stream = with_heartbeats(never_answers(), interval=0.01)
    assert await anext(stream) is None  # a heartbeat
    await stream.aclose()
    assert cancelled.is_set()


def test_the_production_interval_is_fifteen_seconds():
    assert HEARTBEAT_SECONDS == 15


@pytest.mark.asyncio
async def test_a_failing_source_raises_in_the_reader_after_its_events():
    async def fails_after_one():
        yield "first"
        raise ValueError("the model broke")

    seen = []
    with pytest.raises(ValueError, match="the model broke"):
        async for item in with_heartbeats(fails_after_one(), interval=10):
            seen.append(item)
    assert seen == ["first"]


@pytest.mark.asyncio
async def test_an_event_that_arrives_while_a_heartbeat_is_sent_is_not_lost():
    released = asyncio.Event()

    async def answers_when_released():
        await released.wait()
        yield "answer"

    seen = []
    async for item in with_heartbeats(answers_when_released(), interval=0.01):
        seen.append(item)
        if item is None:
            released.set()
            await asyncio.sleep(0)  # the source answers while the reader is still away
    assert seen[-1] == "answer" and set(seen[:-1]) == {None}


@pytest.mark.asyncio
async def test_the_stream_fetches_at_most_one_event_ahead_of_its_reader():
    pulled = []

    async def tokens():
        for number in range(10):
            pulled.append(number)
            yield number

    stream = with_heartbeats(tokens(), interval=10)
    assert await anext(stream) == 0
    for _ in range(10):
        await asyncio.sleep(0)  # every chance for the fetching task to run ahead
    assert pulled == [0, 1]  # the next one is ready; nothing further is read while the reader is away
    assert [item async for item in stream] == list(range(1, 10))
