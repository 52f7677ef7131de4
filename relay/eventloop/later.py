"""Work that finishes after the answer: tasks the serving loop keeps and drains before it stops.

A model call's closing transaction may run after the client has its last bytes (agents.runner),
but only on a loop that outlives the request: the production server's (`relay.serve` marks it
with `serve_here` when it starts and awaits `drain` when it stops). Anywhere else (the test
client, a Celery task's `async_to_sync`, the development server) the loop may close as soon as
the request returns and would cancel the work, so `later` declines and the caller awaits it.
The tasks are held here until they end, so none is garbage-collected half-way.

Work that may wait (`behind_answers`: a closing's commit, held in the ledger meanwhile) waits for
the model calls of this loop (`answering`, marked by the ASGI handler from the arrival of the body
until the response ends): it starts once none has been before its answer for
RELAY_CLOSING_QUIET_MS, or at once when the last of them is a stream past its first token
(`answer_started`: the commit runs while it sends the rest), and RELAY_CLOSING_HOLD_MS after the
oldest of it was held at the latest. Then all that waits goes together, so group commit writes it
as one batch. A closing that commits beside the next request's admission, reservation and opening
takes the CPU, the interpreter lock and PostgreSQL from them (bench/README.md), and a client that
sends its next request as soon as it has an answer does so within a millisecond: a moment without
requests counts only once it has lasted. For a stream's own closing, held as its model's answer
ends, that moment begins when its response has ended (the settle and the last events sent), when its
client can send the next request: counted from the hold, it ran out while that stream was still
finishing and the commit met the next request's start (bench/README.md). A turn that waits for its
conversation's closing (`settled`) and a draining server start it at once.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import weakref

from django.conf import settings

logger = logging.getLogger(__name__)

_tasks: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # serving loop -> its pending tasks
_gates: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # serving loop -> _Gate
_answering: contextvars.ContextVar = contextvars.ContextVar("relay_answering", default=None)  # the request's mark


class _Gate:
    """The model calls of one serving loop not yet answered, and the work waiting for none to be."""

    def __init__(self):
        self.starting = 0
        self.waiting: list[asyncio.Future] = []
        self.draining = False  # the server stops: nothing waits any more
        self.quieting: asyncio.TimerHandle | None = None  # a moment without model calls, not yet long enough
        self.deadline: asyncio.TimerHandle | None = None  # the oldest waiting work's hold ends

    def hold(self, waiter: asyncio.Future, by_a_sending_stream: bool = False) -> None:
        """`by_a_sending_stream`: held by a stream past its first event that has not ended: its quiet
        moment counts from its end (`ended`)."""
        self.waiting = [*(other for other in self.waiting if not other.done()), waiter]  # gone: let go at most
        if self.deadline is None:
            self.deadline = asyncio.get_running_loop().call_later(settings.RELAY_CLOSING_HOLD_MS / 1000, self.open)
        if not self.starting and not by_a_sending_stream and self.quieting is None:
            self.quiet()

    def quiet(self) -> None:
        """No model call is before its answer: what waits goes once that has lasted."""
        # Not the loop itself kept here: _gates is keyed by it weakly, and a value holding it would keep it forever.
        self.quieting = asyncio.get_running_loop().call_later(settings.RELAY_CLOSING_QUIET_MS / 1000, self.open)

    def start(self) -> None:
        self.starting += 1
        if self.quieting is not None:
            self.quieting.cancel()
            self.quieting = None

    def answered(self, midway: bool) -> None:
        self.starting -= 1
        if not self.starting and self.waiting:
            if midway:  # a stream past its first token: what waits runs while it sends the rest
                self.open()
            elif self.quieting is None:
                self.quiet()

    def ended(self) -> None:
        """A stream past its first event has ended: its client may send its next request now."""
        if not self.starting and self.waiting and self.quieting is None:
            self.quiet()

    def open(self) -> None:
        for timer in (self.quieting, self.deadline):
            if timer is not None:
                timer.cancel()
        self.quieting = self.deadline = None
        waiting, self.waiting = self.waiting, []
        for waiter in waiting:
            _release(waiter)


def _release(waiter: asyncio.Future | None) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(None)


def _no_op() -> None:
    pass


def serve_here() -> None:
    """Mark the running loop as one that outlives its requests and drains before it stops."""
    loop = asyncio.get_running_loop()
    _tasks.setdefault(loop, set())
    _gates.setdefault(loop, _Gate())


def answering():
    """Mark the request this context serves as before its answer; call what it returns when the
    response ends, or the request does (idempotent; a stream ends it sooner, `answer_started`).
    Nothing to mark on a loop that does not drain."""
    try:
        gate = _gates.get(asyncio.get_running_loop())
    except RuntimeError:
        gate = None
    if gate is None:
        return _no_op
    gate.start()
    mark = _Mark(gate)
    _answering.set(mark)
    return mark


class _Mark:
    """One model call: before its answer, then, for a stream answered at its first event, still
    sending the rest until its response ends."""

    __slots__ = ("before", "gate", "sending")

    def __init__(self, gate: _Gate):
        self.gate, self.before, self.sending = gate, True, True

    def __call__(self, midway: bool = False) -> None:
        if self.before:
            self.before, self.sending = False, midway
            self.gate.answered(midway)
        elif self.sending and not midway:  # the stream's end
            self.sending = False
            self.gate.ended()


def answer_started() -> None:
    """The request this context serves has sent its answer's first event (a stream's first token):
    work held behind answers need not wait for the rest of it."""
    answered = _answering.get()
    if answered is not None:
        answered(midway=True)


def later(work, name: str = "", *, key: str | None = None, behind_answers: bool = False) -> bool:
    """Run the coroutine `work` after the answer if this loop drains; False: the caller must await it.

    `key` names what the work completes (a conversation): `settled(key)` waits for it.
    `behind_answers`: it starts once no model call of this loop is before its answer (module docstring).
    """
    try:
        loop = asyncio.get_running_loop()
        pending = _tasks.get(loop)
    except RuntimeError:
        pending = None
    if pending is None:
        return False
    gate, waiter = _gates[loop], None
    if behind_answers and not gate.draining and settings.RELAY_CLOSING_HOLD_MS > 0 and (
            gate.starting or settings.RELAY_CLOSING_QUIET_MS > 0):
        waiter = loop.create_future()
        mark = _answering.get()  # the request this work closes, if it is one: a stream's closing is held at its end
        gate.hold(waiter, by_a_sending_stream=isinstance(mark, _Mark) and not mark.before and mark.sending)
        held, work = work, _after(waiter, work)
    else:
        held = None
    task = loop.create_task(work, name=name or None)
    task.relay_key, task.relay_waiter = key, waiter
    task.relay_held = held
    pending.add(task)
    task.add_done_callback(_finished(pending))
    return True


async def settled(key: str) -> None:
    """Wait for this loop's pending work on `key` (a conversation's last closing: the next turn reads
    its answer as history). Its failure is not the caller's: the work logs it and recovery covers it."""
    waiting = [task for task in _tasks.get(asyncio.get_running_loop(), ()) if task.relay_key == key]
    for task in waiting:
        _release(task.relay_waiter)  # this request waits for it: it goes now
    if waiting:
        await asyncio.wait(waiting)


async def _after(waiter: asyncio.Future, work):
    await waiter  # cancelled meanwhile: the done callback closes `work`, which never ran
    return await work


def _finished(pending: set):
    def done(task: asyncio.Task) -> None:
        pending.discard(task)
        if task.cancelled() and task.relay_held is not None:
            task.relay_held.close()  # cancelled before it could start: never awaited, and no warning
        if not task.cancelled() and task.exception() is not None:
            logger.error("work after an answer failed (%s)", task.get_name(), exc_info=task.exception())

    return done


def pending() -> int:
    """How many tasks of this loop are still running."""
    return len(_tasks.get(asyncio.get_running_loop(), ()))


async def drain(timeout: float) -> int:
    """Wait for this loop's tasks (and those they start) for up to `timeout` s; cancel what is left.

    Returns how many were cancelled: their work is left to the recovery that covers it.
    """
    tasks = _tasks.get(asyncio.get_running_loop(), set())
    gate = _gates.get(asyncio.get_running_loop())
    if gate is not None:
        gate.draining = True
        gate.open()  # nothing is let wait for requests any more
    deadline = asyncio.get_running_loop().time() + timeout
    while tasks:
        left = deadline - asyncio.get_running_loop().time()
        if left <= 0:
            break
        await asyncio.wait(list(tasks), timeout=left)
    stuck = list(tasks)
    for task in stuck:
        task.cancel()
    if stuck:
        logger.warning("%d task(s) after answers did not finish within %.0f s: cancelled", len(stuck), timeout)
        await asyncio.gather(*stuck, return_exceptions=True)
    return len(stuck)
