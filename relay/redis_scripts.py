"""Lua scripts by EVALSHA on one asyncio Redis client, the calls of one turn of the loop in one trip.

The ledger and the router make about five script calls per model call, and under load many
requests are at one of them in the same turn of the event loop. Each call alone pays redis-py's
pool checkout, a write, a read wake-up and Redis's own read and write: about 70 µs of the
client's CPU, where a pipeline of calls pays those once (about 30 µs a call at 8 or more in
flight; `bench/README.md`, issue 22). So `ScriptRunner.run` queues the call and the first call of
a turn starts one task that sends every call queued by then as one pipeline (no MULTI: each
script is atomic on its own, and their order is the order they were made in).

Nothing about a call's meaning changes: each caller gets its own reply or its own exception, a
connection error fails the calls of that trip (as it would each of them alone), and a script
Redis no longer holds (a restart, a promoted replica) is loaded and that call sent again. A
caller cancelled while its call is in flight does not take it back, as with a call sent alone.
"""

from __future__ import annotations

import asyncio
import hashlib

from redis.exceptions import NoScriptError


def _sha(script: str) -> str:
    return hashlib.sha1(script.encode(), usedforsecurity=False).hexdigest()


class ScriptRunner:
    """One per redis.asyncio client (so per event loop: its connections belong to that loop)."""

    def __init__(self, client):
        self.client = client
        self._shas: dict[str, str] = {}
        self._queue: list[tuple[str, tuple, asyncio.Future]] = []
        self._trips: set[asyncio.Task] = set()  # the loop keeps only weak references to tasks

    def run(self, script: str, args) -> asyncio.Future:
        """The script's reply (await it); raises what Redis or the connection raised for this call."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        if not self._queue:
            trip = loop.create_task(self._send())  # its first step runs next turn, after this turn's calls
            self._trips.add(trip)
            trip.add_done_callback(self._trips.discard)
        self._queue.append((script, tuple(args), future))
        return future

    async def _send(self) -> None:
        calls, self._queue = self._queue, []
        try:
            replies = await self._pipeline(calls)
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
        except BaseException:  # the trip itself was cancelled (the loop is closing)
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

    async def _pipeline(self, calls) -> list:
        if len(calls) == 1:  # alone: the plain call, without a pipeline's bookkeeping
            script, args, _ = calls[0]
            try:
                return [await self.client.evalsha(self._sha_of(script), 0, *args)]
            except NoScriptError as missing:
                return [missing]
        async with self.client.pipeline(transaction=False) as pipe:
            for script, args, _ in calls:
                pipe.evalsha(self._sha_of(script), 0, *args)
            return await pipe.execute(raise_on_error=False)

    def _sha_of(self, script: str) -> str:
        sha = self._shas.get(script)
        if sha is None:
            sha = self._shas[script] = _sha(script)
        return sha
