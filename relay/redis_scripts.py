"""Lua scripts by EVALSHA on one asyncio Redis client, the calls of one turn of the loop in one trip.

The ledger and the router make about five script calls per model call, and under load many
requests are at one of them in the same turn of the event loop. Each call alone pays redis-py's
pool checkout, a write, a read wake-up and Redis's own read and write: about 70 µs of the
client's CPU, where a pipeline of calls pays those once (about 30 µs a call at 8 or more in
flight; `bench/README.md`, issue 22). So `ScriptRunner.run` queues the call, and one sender task
sends every call queued by then as one pipeline (no MULTI: each script is atomic on its own, and
their order is the order they were made in); calls made while a trip is out go in the next one.

The trips go on one connection the runner holds (checked out of the client's pool once, and opened
again before a trip when the server closed it meanwhile), written and read with
redis-py's own connection calls: a profile of an idle plain request put the pool's checkout and
release, its timeouts and the client's per-command wrapping at over half of the scripts' CPU on
the event loop, which is a quarter of the loop's busy time (`bench/README.md`).

Nothing about a call's meaning changes: each caller gets its own reply or its own exception, a
connection error fails the calls of that trip after the client's own retries (as it would each
of them alone), and a script Redis no longer holds (a restart, a promoted replica) is loaded and
that call sent again. A caller cancelled while its call is in flight does not take it back, as
with a call sent alone.
"""

from __future__ import annotations

import asyncio
import hashlib

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError


def _sha(script: str) -> str:
    return hashlib.sha1(script.encode(), usedforsecurity=False).hexdigest()


class ScriptRunner:
    """One per redis.asyncio client (so per event loop: its connections belong to that loop)."""

    def __init__(self, client):
        self.client = client
        self._shas: dict[str, str] = {}
        self._queue: list[tuple[str, tuple, asyncio.Future]] = []
        self._queue_written: asyncio.Future | None = None  # done once the queued calls are written
        self._sender: asyncio.Task | None = None  # the loop keeps only weak references to tasks
        self._connection = None  # held for the trips, one at a time

    def run(self, script: str, args) -> asyncio.Future:
        """The script's reply (await it); raises what Redis or the connection raised for this call."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.append((script, tuple(args), future))
        if self._queue_written is None:
            self._queue_written = loop.create_future()
        if self._sender is None:  # its first step runs next turn, after this turn's calls
            self._sender = loop.create_task(self._send_queued())
        return future

    async def sent(self) -> None:
        """Once the calls made so far have been written to Redis, their replies still to come: a caller
        with work of its own to do meanwhile (accounts.admission.read_key_ahead) does it during the
        trip rather than before it. Raises nothing of its own: a failed trip fails its calls."""
        if self._queue_written is not None:
            await asyncio.shield(self._queue_written)

    async def _send_queued(self) -> None:
        try:
            while self._queue:
                calls, self._queue = self._queue, []
                written, self._queue_written = self._queue_written, None
                try:
                    await self._send(calls, written)
                finally:
                    _settle(written)
        except BaseException:  # the sender itself was cancelled (the loop is closing)
            for *_, future in self._queue:
                future.cancel()
            self._queue = []
            raise
        finally:
            _settle(self._queue_written)
            self._queue_written = None
            self._sender = None

    async def _send(self, calls, written: asyncio.Future | None = None) -> None:
        try:
            replies = await self._pipeline(calls, written)
            missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
            if missing:
                for script in {calls[i][0] for i in missing}:
                    await self.client.script_load(script)
                for i, reply in zip(missing, await self._pipeline([calls[i] for i in missing]), strict=True):
                    replies[i] = reply
        except Exception as error:  # every caller of the trip gets its failure
            for *_, future in calls:
                if not future.done():
                    future.set_exception(error)
            return
        except BaseException:
            for *_, future in calls:
                future.cancel()
            raise
        for (*_, future), reply in zip(calls, replies, strict=True):
            if future.done():  # its caller was cancelled
                continue
            if isinstance(reply, Exception):
                future.set_exception(reply)
            else:
                future.set_result(reply)

    async def _pipeline(self, calls, written: asyncio.Future | None = None) -> list:
        connection = await self._held()
        commands = [("EVALSHA", self._sha_of(script), 0, *args) for script, args, _ in calls]
        try:
            # The client's retry policy, as its own commands have: a lost connection is opened again.
            return await connection.retry.call_with_retry(lambda: _trip(connection, commands, written),
                                                          lambda _error: connection.disconnect())
        except BaseException:  # its replies may still be on the way: never read them as the next trip's
            self._connection = None
            await asyncio.shield(_give_back(self.client.connection_pool, connection))
            raise

    async def _held(self):
        connection = self._connection
        if connection is None:
            connection = self._connection = await self.client.connection_pool.get_connection()
        elif connection.is_connected and await _closed_or_dirty(connection):
            # Closed by the server while held (a restart, an idle timeout, CLIENT KILL), or holding
            # bytes nobody asked for: the trip goes on a fresh socket (send opens it) rather than
            # failing its callers. (The pool's own check at checkout is off with RESP3's
            # maintenance notifications, which redis-py enables by default.)
            await connection.disconnect(nowait=True)
        return connection

    def _sha_of(self, script: str) -> str:
        sha = self._shas.get(script)
        if sha is None:
            sha = self._shas[script] = _sha(script)
        return sha


async def _trip(connection, commands, written: asyncio.Future | None = None) -> list:
    """Send the commands at once, then read their replies in order (an error reply in its place)."""
    await connection.send_packed_command(connection.pack_commands(commands), check_health=False)
    _settle(written)
    replies = []
    for _ in commands:
        try:
            replies.append(await connection.read_response())
        except ResponseError as error:
            replies.append(error)
    return replies


def _settle(written: asyncio.Future | None) -> None:
    if written is not None and not written.done():
        written.set_result(None)


async def _closed_or_dirty(connection) -> bool:
    try:
        return await connection.can_read()
    except (RedisConnectionError, OSError):  # redis-py's ConnectionError is not the builtin one
        return True


async def _give_back(pool, connection) -> None:
    await connection.disconnect(nowait=True)
    try:
        await pool.release(connection)
    except (KeyError, ValueError):  # the pool was reset or closed meanwhile: nothing to give back
        pass
