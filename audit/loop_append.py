"""Appending on the event loop's own PostgreSQL connection, in the caller's transaction there.

A model call's closing (agents.actions.runs) writes its rows and its audit events in one
transaction. On a DB thread that is five round trips (the rows, the answer, the lock, the chain,
the commit), and after each the thread waits for the interpreter lock while the loop streams the
next answer: an idle stream's closing took 8-16 ms there and ran into the next request
(bench/README.md). Here it is two round trips on the loop's connection (relay.eventloop.pg): BEGIN,
the caller's statements and audit_lock_or_queue; then audit_chain and COMMIT (or COMMIT alone, the
events queued, and then a drain). The same functions, the same JSON and the same hashes as
audit.pg_append's path, so a chain written either way verifies alike; an event exists if and only
if the caller's rows committed with it.
"""

from __future__ import annotations

import logging

from django.db import DEFAULT_DB_ALIAS

from audit import pg_append
from audit.services import _link, _set_time, drain
from relay.eventloop import pg
from relay.eventloop.db import run_db

logger = logging.getLogger(__name__)

_LOCK_OR_QUEUE = "SELECT * FROM audit_lock_or_queue(%s::jsonb, false)"
_CHAIN_AND_COMMIT = "SELECT * FROM audit_chain(%s::jsonb); COMMIT"


async def append_with(statements: list[tuple[str, list]], events: list, lane: str = pg.CLOSINGS) -> list | None:
    """In one transaction on this loop's `lane` connection: `statements` ([(sql, params)]), then the
    events appended (chained under the append lock, or queued behind the writer that holds it).
    Returns each statement's rows once committed. None, with nothing written, when the chain has no
    event to link to (its head is a checkpoint's, which the ORM reads: the caller writes it all on a
    DB thread). Raises Django's database errors, the transaction rolled back."""
    sql = "BEGIN; " + "; ".join(statement for statement, _ in statements) + "; " + _LOCK_OR_QUEUE
    params = [param for _, values in statements for param in values]
    async with pg.session(lane) as execute:
        _set_time(events)  # a queued event's time; a chained one's is set again under the lock
        sets = await execute(sql, [*params, pg_append.queued_json(events)])
        got, sequence, last_hash = sets[-1][0]
        if got and sequence is None:
            await execute("ROLLBACK", [])
            return None
        if got:
            _set_time(events)
            _link(events, (sequence, last_hash))
            chained = await execute(_CHAIN_AND_COMMIT, [pg_append.chained_json(events)])
            pg_append.chained_ids(events, dict(chained[0]), DEFAULT_DB_ALIAS)
        else:
            await execute("COMMIT", [])
    if not got:
        await _drain_queued()
    return sets[1:-1]


async def _drain_queued() -> None:
    """As the thread's path does once its queueing transaction committed: chain what waits, unless
    another process drains already. Its failure is only logged: the next drain chains them."""
    try:
        await run_db(drain, DEFAULT_DB_ALIAS, wait=False)
    except Exception:
        logger.exception("audit drain failed; the queued events wait for the next drain")
