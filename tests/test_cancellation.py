"""A cancelled task stays cancelled (relay/eventloop/wait_for.py): a run whose client left must stop.

Control: Python 3.11's asyncio.wait_for drops a cancellation that arrives in the turn its awaited
task finishes; relay.eventloop.wait_for.install() puts 3.12's in its place.
"""

import asyncio

import pytest

from tests.conftest import require_redis


def test_a_cancel_in_the_turn_the_awaited_work_finishes_is_not_lost():
    async def scenario():
        work = asyncio.get_running_loop().create_future()
        caller = asyncio.create_task(asyncio.wait_for(work, 10))
        await asyncio.sleep(0)  # the caller now waits for the work
        work.set_result("finished")
        caller.cancel()  # the client leaves in that same turn
        with pytest.raises(asyncio.CancelledError):
            await caller

    asyncio.run(scenario())


def test_wait_for_still_times_out_and_still_answers():
    async def scenario():
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.sleep(10), 0.01)
        assert await asyncio.wait_for(asyncio.sleep(0, "answer"), 10) == "answer"
        assert await asyncio.wait_for(asyncio.sleep(0, "answer"), None) == "answer"
        done = asyncio.get_running_loop().create_future()
        done.set_result("ready")
        assert await asyncio.wait_for(done, 0) == "ready"
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.sleep(10), 0)

    asyncio.run(scenario())


def test_a_redis_call_cancelled_at_any_point_raises_in_its_caller():
    """Relay's Redis clients have a socket timeout, so redis-py writes each command through wait_for."""
    require_redis()
    from relay import redis_clients

    async def scenario():
        client = redis_clients.async_client(decode_responses=True, socket_timeout=2)
        await client.ping()
        lost = []
        for turns in range(12):  # every point of the call, from its first step to its reply
            for _ in range(20):
                caller = asyncio.create_task(client.get("relay:test:cancellation"))
                for _ in range(turns):
                    await asyncio.sleep(0)
                if not caller.cancel():
                    continue  # it had already answered
                try:
                    await caller
                    lost.append(turns)
                except asyncio.CancelledError:
                    pass
        await client.aclose()
        return lost

    assert asyncio.run(scenario()) == []
