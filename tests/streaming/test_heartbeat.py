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
