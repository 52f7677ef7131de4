"""Group commit: the writes of concurrent requests, committed together in one transaction.

Every model call ends with the same writes (its usage record, stored answer and audit event)
and starts with the same inserts (conversation and messages). Alone, each request pays a
transaction: BEGIN, its statements one by one, the audit lock and head read, COMMIT. Under load
many requests reach that point at once; one writer per event loop takes every write waiting,
runs them as one transaction with bulk statements, and answers each caller after the commit,
so nothing is acknowledged before it is durable. The busier the instance, the larger the
batches; an idle instance writes each request alone, at once.

If a batch fails (say one request's row breaks a constraint), each write of it is retried in
its own transaction, so a bad write fails its own caller only. An `after` step, if given, runs
once per batch after the commit and before its callers are answered, so it is done when they
resume (the model calls' closings: the ledger forgets their records in one trip).

A writer whose batch is plain SQL may also give `on_loop`, the batch written on the event loop's
own connection (relay.eventloop.pg) instead of a DB thread: it answers None when that connection
cannot serve (another database, tests inside a transaction), and the thread writes the batch.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from relay.eventloop.db import run_db

logger = logging.getLogger(__name__)


@dataclass
class Write:
    """One caller's write: `item` for the batch function, in the caller's context (audit actor, request id)."""

    item: object
    context: contextvars.Context = field(default_factory=contextvars.copy_context)

    def run(self, fn, *args):
        """fn(*args) in the caller's context variables, not the writer's."""
        return self.context.run(fn, *args)


@dataclass
class _LoopState:
    pending: list = field(default_factory=list)
    writing: bool = False


class GroupCommit:
    def __init__(self, write_batch: Callable[[list[Write]], list], write_one: Callable[[Write], object], *,
                 max_batch: int = 64, after: Callable[[list[tuple[Write, object]]], Awaitable] | None = None,
                 on_loop: Callable[[list[Write]], Awaitable[list | None]] | None = None):
        """write_batch(writes) -> one result per write, in one transaction; write_one(write) -> its result alone.

        after([(write, result or error), ...]): awaited once per batch, after its commit, before its callers resume.
        on_loop(writes) -> one result (or error) per write, written on the loop, or None: the thread writes them.
        """
        self.write_batch, self.write_one, self.max_batch = write_batch, write_one, max_batch
        self.after, self.on_loop = after, on_loop
        self._states: dict[asyncio.AbstractEventLoop, _LoopState] = {}

    async def submit(self, item):
        """Write item with the others waiting; returns its result once committed (or raises its error)."""
        loop = asyncio.get_running_loop()
        state = self._states.get(loop)
        if state is None:
            state = self._states[loop] = _LoopState()
            for other in [other for other in self._states if other.is_closed()]:
                del self._states[other]  # loops of finished tests and threads
        future = loop.create_future()
        state.pending.append((Write(item), future))
        if not state.writing:
            state.writing = True
            loop.create_task(self._drain(state))
        # The write goes on if the caller is cancelled: it is part of a batch, and callers
        # (the runner's _finish) shield it anyway.
        return await asyncio.shield(future)

    async def _drain(self, state: _LoopState) -> None:
        batch = []
        try:
            while state.pending:
                batch, state.pending = state.pending[:self.max_batch], state.pending[self.max_batch:]
                writes = [write for write, _ in batch]
                try:
                    results = await self.on_loop(writes) if self.on_loop is not None else None
                    if results is None:
                        results = await run_db(self._write, writes)
                except Exception as error:  # every caller must be answered
                    results = [error] * len(batch)
                if self.after is not None:
                    await self._after([write for write, _ in batch], results)
                for (_, future), result in zip(batch, results, strict=True):
                    if future.done():
                        continue
                    if isinstance(result, BaseException):
                        future.set_exception(result)
                    else:
                        future.set_result(result)
        except asyncio.CancelledError:  # the loop is shutting down: nobody is left to answer
            for _, future in [*batch, *state.pending]:
                future.cancel()
            state.pending = []
            raise
        finally:
            state.writing = False

    async def _after(self, writes: list[Write], results: list) -> None:
        try:
            await self.after(list(zip(writes, results, strict=True)))
        except Exception:  # the batch is committed: a failure here is only logged
            logger.exception("the step after a batch of %d writes failed", len(writes))

    def _write(self, writes: list[Write]) -> list:
        if len(writes) > 1:
            try:
                return self.write_batch(writes)
            except Exception:
                logger.info("a batch of %d writes failed; writing each alone", len(writes), exc_info=True)
        results = []
        for write in writes:
            try:
                results.append(self.write_one(write))
            except Exception as error:  # noqa: BLE001  (handed to its caller)
                results.append(error)
        return results
