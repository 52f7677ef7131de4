"""One cache backend per thread under ASGI, as under WSGI, instead of one per request.

Django keeps its cache backends (`django.core.cache.caches`) in an asgiref Local: per thread in
sync code, but per async context on the event loop, so every request built its own backend
object the first time it touched the cache (a failed lookup in its empty context, then
RedisCache.__init__: options parsed, serializer and compressor imported), about 4% of a plain
/v1 request's CPU. A backend holds settings and a shared client, no request state, and its
calls on the loop never await, so two requests cannot interleave inside one: the loop's
requests can share its thread's backends, as a WSGI thread's successive requests do.
relay/redis_cache.py already shares the client between backends built from the same settings.

Django's own test signal puts a fresh Local back when a test overrides CACHES; that only
restores Django's per-context behaviour for the rest of that process.
"""

from __future__ import annotations

import asyncio
import threading
import weakref

from django.core.cache import CacheHandler, caches
from django_redis.cache import RedisCache as DjangoRedisCache
from django_redis.client import DefaultClient


def share_per_thread(handler: CacheHandler = caches) -> None:
    # BaseConnectionHandler keeps its backends as attributes of `_connections` (get/set/delattr),
    # which a threading.local serves: tests/test_eventloop_internals.py holds Django to that.
    handler._connections = threading.local()


# -- the shared cache read on the loop ------------------------------------------------------------
# A request admitted on the loop (accounts.admission.admit_on_loop) reads its API key's cached copy
# and counts its rate limit without a trip to a DB thread: the same keys and values as Django's
# cache (its key function, django-redis's serializer), through the loop's own redis.asyncio client.

_loop_redis: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # loop -> (client, ScriptRunner)


def _redis_of_loop():
    """(the loop's client to the cache's Redis, its script runner); None when the cache is not Redis."""
    backend = caches["default"]
    # django-redis's plain client on one server: what a plain MGET to REDIS_URL reads (not sharded, no herd).
    if not (isinstance(backend, DjangoRedisCache) and type(backend.client) is DefaultClient
            and len(backend.client._server) == 1):
        return None
    loop = asyncio.get_running_loop()
    entry = _loop_redis.get(loop)
    if entry is None:
        from relay import redis_clients
        from relay.redis_scripts import ScriptRunner

        options = backend._params.get("OPTIONS", {})  # the same timeouts as the sync client's
        client = redis_clients.async_client(max_connections=64, pool_timeout=2,
                                            socket_timeout=options.get("SOCKET_TIMEOUT", 2),
                                            socket_connect_timeout=options.get("SOCKET_CONNECT_TIMEOUT", 2))
        entry = _loop_redis[loop] = (client, ScriptRunner(client))
    return entry


# MGET as a script: the reads of one turn of the loop go in the script runner's one pipelined trip on
# the connection it holds. As plain MGETs from a pool, a burst of a thousand streams opening at once
# waited for its 64 connections longer than their timeout (bench/README.md).
_MGET = "return redis.call('MGET', unpack(ARGV))"


class ManyRead:
    """A get_many_on_loop queued now, read later: `sent()` once it is on its way, `result()` its dict.
    A read nobody takes (its request refused before it) is dropped with its reply, error included."""

    def __init__(self, keys: list[str], runner, backend):
        self.keys, self._runner, self._backend = keys, runner, backend
        self._reply = runner.run(_MGET, [backend.make_key(key) for key in keys])
        self._reply.add_done_callback(_retrieved)

    async def sent(self) -> None:
        await self._runner.sent()

    async def result(self) -> dict:
        values = await self._reply
        decode = self._backend.client.decode
        return {key: decode(value) for key, value in zip(self.keys, values, strict=True) if value is not None}


def _retrieved(reply: asyncio.Future) -> None:
    if not reply.cancelled():
        reply.exception()


def read_many_on_loop(keys: list[str]) -> ManyRead | None:
    """get_many_on_loop's trip, queued now (None when the cache is not Redis)."""
    entry = _redis_of_loop()
    return None if entry is None else ManyRead(keys, entry[1], caches["default"])


async def get_many_on_loop(keys: list[str]) -> dict | None:
    """cache.get_many(keys) without blocking the loop (absent keys are left out); None when the
    cache is not Redis (the in-process cache of `make run`): the caller reads it on a thread."""
    read = read_many_on_loop(keys)
    return None if read is None else await read.result()


async def run_script_on_loop(script: str, args: list):
    """A Lua script's reply (its keys passed in ARGV, made with cache.make_key), run on the loop in
    the loop's pipelined trip (relay.redis_scripts); the caller checked the cache is Redis."""
    return await _redis_of_loop()[1].run(script, args)
