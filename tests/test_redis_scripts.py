"""relay.redis_scripts: the script calls of one turn of the loop share one trip, and each keeps its own answer."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from django.conf import settings
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from relay import redis_clients
from relay.redis_scripts import ScriptRunner
from tests.conftest import require_redis

ECHO_INCR = "return {ARGV[1], redis.call('INCR', KEYS[1] or ARGV[2])}"
FAILS_ON_ZERO = "if ARGV[1] == '0' then return redis.error_reply('zero refused') end return ARGV[1]"


def _client():
    return redis_clients.async_client(max_connections=64, decode_responses=True)


def _count_trips(client) -> list[int]:
    """Every write to Redis from the client's connections from now on: one per trip."""
    pool, trips = client.connection_pool, [0]
    connection_class = pool.connection_class
    send = connection_class.send_packed_command

    async def counted(connection, *args, **kwargs):
        if connection.host == pool.connection_kwargs.get("host") and connection.port == pool.connection_kwargs.get(
                "port") and connection.db == pool.connection_kwargs.get("db", 0):
            trips[0] += 1
        return await send(connection, *args, **kwargs)

    connection_class.send_packed_command = counted
    _restore.append(lambda: setattr(connection_class, "send_packed_command", send))
    return trips


_restore: list = []


@pytest.fixture(autouse=True)
def _restore_counting():
    yield
    while _restore:
        _restore.pop()()


def _key() -> str:
    return redis_clients.key_prefix("scripts-test") + uuid.uuid4().hex


def test_calls_made_in_one_turn_go_in_one_trip_and_each_gets_its_own_reply():
    require_redis()
    key = _key()

    async def scenario():
        client = _client()
        await client.script_load(ECHO_INCR)  # a first call's NoScript round is another test's
        runner, trips = ScriptRunner(client), _count_trips(client)
        try:
            replies = await asyncio.gather(*(runner.run(ECHO_INCR, (f"call-{i}", key)) for i in range(20)))
            alone = await runner.run(ECHO_INCR, ("alone", key))
            return replies, alone, trips[0]
        finally:
            await client.delete(key)
            await client.aclose()

    replies, alone, trips = asyncio.run(scenario())
    assert [reply[0] for reply in replies] == [f"call-{i}" for i in range(20)]
    assert [reply[1] for reply in replies] == list(range(1, 21))  # run in the order they were made
    assert alone == ["alone", 21]
    assert trips == 2  # twenty calls in one trip, then one alone


def test_a_script_error_is_its_callers_alone():
    require_redis()

    async def scenario():
        client = _client()
        runner = ScriptRunner(client)
        try:
            return await asyncio.gather(*(runner.run(FAILS_ON_ZERO, (str(i),)) for i in (1, 0, 2)),
                                        return_exceptions=True)
        finally:
            await client.aclose()

    first, refused, third = asyncio.run(scenario())
    assert (first, third) == ("1", "2")
    assert isinstance(refused, ResponseError) and "zero refused" in str(refused)


def test_a_script_redis_forgot_is_loaded_again():
    require_redis()
    key = _key()

    async def scenario():
        client = _client()
        runner = ScriptRunner(client)
        try:
            await runner.run(ECHO_INCR, ("first", key))
            await client.script_flush()  # as after a restart, or on a promoted replica
            again = await asyncio.gather(*(runner.run(ECHO_INCR, (f"again-{i}", key)) for i in range(3)))
            alone_after_flush = (await client.script_flush(), await runner.run(ECHO_INCR, ("alone", key)))[1]
            return again, alone_after_flush
        finally:
            await client.delete(key)
            await client.aclose()

    again, alone = asyncio.run(scenario())
    assert again == [["again-0", 2], ["again-1", 3], ["again-2", 4]]
    assert alone == ["alone", 5]


def test_an_unreachable_server_fails_every_call_of_the_trip():
    async def scenario():
        client = redis_clients.async_client(redis_clients.Target("redis://127.0.0.1:1/0"),
                                            socket_connect_timeout=0.5, decode_responses=True)
        runner = ScriptRunner(client)
        try:
            return await asyncio.gather(*(runner.run(ECHO_INCR, (str(i), "k")) for i in range(3)),
                                        return_exceptions=True)
        finally:
            await client.aclose()

    failures = asyncio.run(scenario())
    assert len(failures) == 3 and all(isinstance(failure, RedisConnectionError) for failure in failures)


def test_a_cancelled_caller_leaves_the_others_their_replies():
    require_redis()
    key = _key()

    async def scenario():
        client = _client()
        runner = ScriptRunner(client)
        try:
            calls = [asyncio.ensure_future(runner.run(ECHO_INCR, (f"c{i}", key))) for i in range(3)]
            calls[1].cancel()
            results = await asyncio.gather(*calls, return_exceptions=True)
            return results, int(await client.get(key))
        finally:
            await client.delete(key)
            await client.aclose()

    (first, cancelled, third), count = asyncio.run(scenario())
    assert first[0] == "c0" and third[0] == "c2"
    assert isinstance(cancelled, asyncio.CancelledError)
    assert count == 3  # a call already queued is sent, as one sent alone would have been


@pytest.mark.parametrize("kind", ["ledger", "router"])
def test_the_ledger_and_the_router_send_their_concurrent_calls_together(kind):
    require_redis()

    async def scenario():
        if kind == "ledger":
            from billing.ledger_redis import RedisLedger

            target = RedisLedger(settings.REDIS_URL, _key() + ":")
            await target.initialize({"scope": 0})
            client = target.backend.client()
            await target.reserve("warm", [("scope", 10_000)], min_nanos=1, max_nanos=100, ttl=60)
            trips = _count_trips(client)
            grants = await asyncio.gather(*(target.reserve(f"r{i}", [("scope", 10_000)], min_nanos=1,
                                                           max_nanos=100, ttl=60) for i in range(10)))
            ok, made = all(grant.granted for grant in grants), trips[0]
            await target.clear()
        else:
            from agents.router.state_base import Candidate
            from agents.router.state_redis import RedisState

            target = RedisState(settings.REDIS_URL, _key() + ":")
            client = target.clients._client()

            def acquire(lease):
                return target.acquire([Candidate("d1")], strategy="weighted_random", lease=lease, now=1000.0,
                                      ttl=30, tokens=0, rand=0.5, probe_ttl=10)

            await acquire("warm")
            trips = _count_trips(client)
            picks = await asyncio.gather(*(acquire(f"l{i}") for i in range(10)))
            ok, made = all(pick.key == "d1" for pick in picks), trips[0]
            target.clear()
        await client.aclose()
        return ok, made

    ok, trips = asyncio.run(scenario())
    assert ok
    assert trips == 1  # ten calls made in one turn: one trip, where each alone took its own


def test_the_trips_go_on_one_held_connection_opened_again_when_redis_closes_it():
    """The pool's checkout and release were over half of a call's CPU: the runner holds one
    connection for its trips, and a connection the server dropped meanwhile is opened again."""
    require_redis()
    key, name = _key(), f"held-{uuid.uuid4().hex}"

    async def scenario():
        client = redis_clients.async_client(max_connections=64, decode_responses=True, client_name=name)
        await client.script_load(ECHO_INCR)
        runner = ScriptRunner(client)
        pool, checkouts = client.connection_pool, [0]
        checkout = pool.get_connection

        async def counted(*args, **kwargs):
            checkouts[0] += 1
            return await checkout(*args, **kwargs)

        pool.get_connection = counted
        try:
            first = [await runner.run(ECHO_INCR, (f"a{i}", key)) for i in range(50)]
            async with redis_clients.async_client(decode_responses=True) as other:
                killed = await _kill_client_named(other, name)
            after = await runner.run(ECHO_INCR, ("after", key))
            return first, killed, after, checkouts[0]
        finally:
            await client.delete(key)
            await client.aclose()

    first, killed, after, checkouts = asyncio.run(scenario())
    assert [reply[1] for reply in first] == list(range(1, 51))
    assert killed >= 1
    assert after == ["after", 51]  # the dropped connection was opened again, the call made once
    assert checkouts == 1


async def _kill_client_named(client, name: str) -> int:
    """Kill the connections named `name`, and return once Redis has closed them (it closes a killed
    client after its own reply, so the socket's end is not there yet when CLIENT KILL answers)."""
    killed = 0
    for fields in await _clients_named(client, name):
        killed += await client.execute_command("CLIENT", "KILL", "ID", fields["id"])
    while await _clients_named(client, name):
        pass
    return killed


async def _clients_named(client, name: str) -> list[dict]:
    lines = (await client.execute_command("CLIENT", "LIST")).splitlines()
    found = (dict(part.split("=", 1) for part in line.split() if "=" in part) for line in lines)
    return [fields for fields in found if fields.get("name") == name]


def test_a_trip_that_timed_out_leaves_no_reply_for_the_next_one():
    """A reply that comes after its callers gave up must never be read as the next trip's."""
    require_redis()
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
    from redis.exceptions import TimeoutError as RedisTimeoutError

    key = _key()

    async def scenario():
        client = redis_clients.async_client(max_connections=64, decode_responses=True, socket_timeout=0.05,
                                            retry=Retry(NoBackoff(), 0))
        await client.script_load(ECHO_INCR)
        runner = ScriptRunner(client)
        try:
            await runner.run(ECHO_INCR, ("warm", key))
            async with redis_clients.async_client(decode_responses=True) as other:
                # Writes only (the script writes), briefly: parallel test workers share this Redis.
                await other.execute_command("CLIENT", "PAUSE", 200, "WRITE")
                late = await asyncio.gather(runner.run(ECHO_INCR, ("late", key)), return_exceptions=True)
                await other.set(key + ":probe", 1, ex=60)  # a write: it returns once the pause is over
                await other.delete(key + ":probe")
            after = await runner.run(ECHO_INCR, ("after", key))
            return late[0], after
        finally:
            await client.delete(key)
            await client.aclose()

    late, after = asyncio.run(scenario())
    assert isinstance(late, RedisTimeoutError)
    assert after[0] == "after"  # its own reply, not the late call's
