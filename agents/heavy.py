"""Admission of heavy work: sandboxed code, document ingestion, image analysis and OCR.

Each piece of heavy work holds two leases while it runs: one of its host's RELAY_HEAVY_SLOTS
(default: the cores this process may use; every Relay process on the host shares them) and one
of its user's RELAY_HEAVY_PER_USER (default 1, counted across the cluster). Admission never
waits: without a free slot the caller gets ``Busy``, which is 429 `busy` with Retry-After over
HTTP, an error event with `retry_after` over the WebSocket, and a tool error inside a stream
that has already started.

With Redis, leases are members of two sorted sets scored by their expiry, taken (after purging
expired ones) by one Lua script: a process that dies holds its slots only until
RELAY_HEAVY_LEASE_SECONDS pass, which is longer than any heavy work's own time limit (sandbox
wall time, RELAY_MAX_PARSE_SECONDS, the OCR timeout). Embedded, the leases are in-process.

Where admission happens: ``admit_run`` at the start of ``agents.runner.prepare`` takes the slot
for a run whose agent will certainly do heavy work (the code agent given a program, the vision
agent given an image), so the client gets a plain 429 before any stream starts; the run's first
heavy tool call uses that lease. Heavy work that only a model decides on mid-stream is admitted
by the tool itself (``heavy_slot``). Work done in a worker thread holds its slot through
``in_thread``, which the thread itself gives back: a cancelled caller cannot stop a thread.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import functools
import logging
import os
import socket
import threading
import time
import uuid
import weakref
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass

from django.conf import settings
from rest_framework import exceptions

logger = logging.getLogger(__name__)

# Heavy work lasts seconds (the sandbox stops code after 10): a client told to come back in
# a few seconds usually finds a slot; a later refusal says the same again.
RETRY_AFTER_SECONDS = 5
# A lease admitted before the stream is used by its first tool call only while it surely
# still holds: a model may take a while before it asks for the tool.
_CLAIM_MARGIN = 0.5

_ACQUIRE = """
for _, key in ipairs(KEYS) do redis.call('ZREMRANGEBYSCORE', key, '-inf', ARGV[2]) end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then return 'user' end
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[5]) then return 'host' end
for _, key in ipairs(KEYS) do
  redis.call('ZADD', key, ARGV[3], ARGV[1])
  redis.call('EXPIRE', key, ARGV[6])
end
return ''
"""
_RELEASE = "for _, key in ipairs(KEYS) do redis.call('ZREM', key, ARGV[1]) end return 1"


class Busy(exceptions.Throttled):
    """No free slot for heavy work: 429 `busy` with Retry-After (relay.api.errors)."""

    default_code = "busy"
    MESSAGES = {
        "user": "You already have heavy work running (code, a document being read or an image being "
                "analysed); wait for it to finish.",
        "host": "This server is running as much heavy work (code, documents, images) as it can; "
                "try again shortly.",
    }

    def __init__(self, scope: str, wait: int = RETRY_AFTER_SECONDS):
        super().__init__(wait=wait, detail=self.MESSAGES[scope])
        self.scope = scope


@dataclass
class Lease:
    id: str
    user_key: str
    host_key: str
    expires: float  # time.monotonic() by which the lease has surely expired
    claimed: bool = False
    released: bool = False

    def claim(self) -> bool:
        """Hand a pre-admitted lease to the run's first heavy step (once, while it still holds)."""
        if self.claimed or self.released or time.monotonic() > self.expires - _CLAIM_MARGIN * _ttl():
            return False
        self.claimed = True
        return True

    def hand_over(self) -> Lease:
        """The same lease as a new holder that alone may release it; releasing this one becomes a no-op."""
        self.released = True
        return dataclasses.replace(self, released=False)


def _ttl() -> int:
    return max(1, settings.RELAY_HEAVY_LEASE_SECONDS)


def _prefix() -> str:
    # The hash tag keeps both keys of a lease in one Redis Cluster slot (the script needs them
    # together); the xdist worker suffix keeps parallel test workers apart, as the ledger's does.
    return "{" + os.environ.get("RELAY_CACHE_PREFIX", "relay") + os.environ.get("PYTEST_XDIST_WORKER", "") + "}:heavy:"


def _new_lease(user) -> Lease:
    host = settings.RELAY_HEAVY_HOST or socket.gethostname()
    return Lease(id=uuid.uuid4().hex, user_key=f"{_prefix()}user:{getattr(user, 'pk', None)}",
                 host_key=f"{_prefix()}host:{host}", expires=time.monotonic() + _ttl())


def _limits() -> tuple[int, int]:
    return max(1, settings.RELAY_HEAVY_PER_USER), max(1, settings.RELAY_HEAVY_SLOTS)


class _LocalSlots:
    """The embedded mode's slots: one process, so in-process leases are the host's."""

    def __init__(self):
        self.lock = threading.Lock()
        self.holders: dict[str, dict[str, float]] = {}

    def acquire(self, lease: Lease, now: float) -> str:
        with self.lock:
            keys = (lease.user_key, lease.host_key)
            for key in keys:
                live = {k: v for k, v in self.holders.get(key, {}).items() if v > now}
                self.holders[key] = live
            for key, limit, scope in zip(keys, _limits(), ("user", "host"), strict=True):
                if len(self.holders[key]) >= limit:
                    return scope
            for key in keys:
                self.holders[key][lease.id] = now + _ttl()
            return ""

    def release(self, lease: Lease) -> None:
        with self.lock:
            for key in (lease.user_key, lease.host_key):
                self.holders.get(key, {}).pop(lease.id, None)


_LOCAL = _LocalSlots()
_sync_client = None
_async_clients: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # loop -> (client, acquire, release)


def _unavailable(error: Exception):
    from relay.api.errors import ServiceUnavailable

    return ServiceUnavailable(f"Relay cannot check its limits on heavy work (Redis): {error}")


def _sync_scripts():
    global _sync_client
    if _sync_client is None:
        from relay import redis_clients

        client = redis_clients.sync_client(decode_responses=True, socket_timeout=2, socket_connect_timeout=1)
        _sync_client = (client, client.register_script(_ACQUIRE), client.register_script(_RELEASE))
    return _sync_client


def _async_scripts():
    loop = asyncio.get_running_loop()
    entry = _async_clients.get(loop)
    if entry is None:  # redis.asyncio connections belong to the loop that made them
        from relay import redis_clients

        client = redis_clients.async_client(decode_responses=True, socket_timeout=2, socket_connect_timeout=1)
        entry = _async_clients[loop] = (client, client.register_script(_ACQUIRE), client.register_script(_RELEASE))
    return entry


def _acquire_args(lease: Lease, now: float) -> tuple[list, list]:
    per_user, per_host = _limits()
    return [lease.user_key, lease.host_key], [lease.id, repr(now), repr(now + _ttl()), per_user, per_host, _ttl()]


def _refuse(scope: str) -> None:
    if scope:
        raise Busy(scope)


def acquire_sync(user, *, now: float | None = None) -> Lease:
    """A slot of the host and of ``user`` for heavy work, or Busy; release it with release_sync."""
    from redis.exceptions import RedisError

    lease, now = _new_lease(user), time.time() if now is None else now
    if not settings.REDIS_URL:
        _refuse(_LOCAL.acquire(lease, now))
        return lease
    keys, args = _acquire_args(lease, now)
    try:
        scope = _sync_scripts()[1](keys=keys, args=args)
    except RedisError as error:
        raise _unavailable(error) from None
    _refuse(scope)
    return lease


async def acquire(user, *, now: float | None = None) -> Lease:
    """acquire_sync for async code: one Redis round trip on the event loop, no thread."""
    from redis.exceptions import RedisError

    lease, now = _new_lease(user), time.time() if now is None else now
    if not settings.REDIS_URL:
        _refuse(_LOCAL.acquire(lease, now))
        return lease
    keys, args = _acquire_args(lease, now)
    try:
        scope = await _async_scripts()[1](keys=keys, args=args)
    except RedisError as error:
        raise _unavailable(error) from None
    _refuse(scope)
    return lease


def _releasing(lease: Lease | None) -> bool:
    if lease is None or lease.released:
        return False
    lease.released = True
    return True


def release_sync(lease: Lease | None) -> None:
    """Give a lease back (idempotent); if Redis is unreachable it expires by itself."""
    from redis.exceptions import RedisError

    if not _releasing(lease):
        return
    if not settings.REDIS_URL:
        _LOCAL.release(lease)
        return
    try:
        _sync_scripts()[2](keys=[lease.user_key, lease.host_key], args=[lease.id])
    except RedisError:
        logger.warning("could not release a heavy-work lease; it expires by itself", exc_info=True)


async def release(lease: Lease | None) -> None:
    from redis.exceptions import RedisError

    if not _releasing(lease):
        return
    if not settings.REDIS_URL:
        _LOCAL.release(lease)
        return
    try:
        await _async_scripts()[2](keys=[lease.user_key, lease.host_key], args=[lease.id])
    except RedisError:
        logger.warning("could not release a heavy-work lease; it expires by itself", exc_info=True)


@asynccontextmanager
async def heavy_slot(user, *, admitted: Lease | None = None):
    """Hold a slot for the block: ``admitted`` (the run's lease from admit_run) if still unused, else a new one."""
    lease = admitted if admitted is not None and admitted.claim() else await acquire(user)
    try:
        yield lease
    finally:
        await asyncio.shield(release(lease))


async def in_thread(user, fn, /, *args, admitted: Lease | None = None, **kwargs):
    """``fn(*args, **kwargs)`` in a worker thread that holds a heavy slot until ``fn`` ends.

    Cancelling the awaiting coroutine (a client that hung up) cannot stop the thread, so the slot
    is the thread's to give back, not the caller's (nor the run's, for an ``admitted`` lease):
    otherwise a client hanging up again and again would run work past every cap. A thread that
    never ends holds it only until the lease expires (RELAY_HEAVY_LEASE_SECONDS).
    """
    lease = (admitted if admitted is not None and admitted.claim() else await acquire(user)).hand_over()
    abandoned = threading.Event()

    def work():
        try:
            return None if abandoned.is_set() else fn(*args, **kwargs)  # skipped if cancelled while queued
        finally:
            release_sync(lease)

    job = asyncio.get_running_loop().run_in_executor(None, functools.partial(contextvars.copy_context().run, work))
    try:
        # Shielded: cancelling a job still queued in the executor would drop it unrun, and its lease unreleased.
        return await asyncio.shield(job)
    except asyncio.CancelledError:
        abandoned.set()
        raise


@contextmanager
def heavy_slot_sync(user):
    lease = acquire_sync(user)
    try:
        yield lease
    finally:
        release_sync(lease)


async def admit_run(req) -> Lease | None:
    """A slot for a run whose agent will certainly do heavy work, before anything else: 429 `busy` if none.

    Released by the runner when the run ends (or when prepare refuses it); the run's first
    heavy tool call uses it.
    """
    from agents.registry import get_agent
    from relay.observability import metrics

    agent = get_agent(req.agent)
    if agent is None or req.messages is not None or not agent.runs_heavy_work(req.query, req.attachment):
        return None
    try:
        return await acquire(req.user)
    except Busy:
        metrics.record_refusal(agent=agent.name, reason="busy")
        raise


def forget() -> None:
    """Drop every lease of this key space (tests)."""
    with _LOCAL.lock:
        _LOCAL.holders.clear()
    if settings.REDIS_URL:
        client = _sync_scripts()[0]
        pattern = _prefix().replace("{", "\\{").replace("}", "\\}") + "*"
        for key in client.scan_iter(match=pattern):
            client.delete(key)
