"""A PostgreSQL connection of the event loop's own, for the hot path's plain-SQL writes.

The ORM is sync, so every query of a model call goes to a thread of relay.eventloop.db's pool and
back: on an idle instance the run's opening (one round trip of plain SQL, agents.actions.run_rows)
spent more time waiting for the pool's thread and for the interpreter lock on its way back than
in PostgreSQL (bench/README.md). A write that needs no ORM, only its SQL and parameters, can run
on the loop itself over psycopg's async connection: `execute_sets` sends it and returns the rows
of each statement.

One connection per event loop and lane (the openings', the closings': a closing's transaction
takes two round trips, and the next request's opening does not wait behind it), one caller at a
time (group commit already sends one batch at a time per loop); in autocommit, the statements
carrying their own BEGIN/COMMIT, over one round trip (`execute_sets`) or several (`session`). It is opened with
Django's connection parameters and type adapters, binds values client-side (a round trip of
several statements) and is opened again after it breaks. A statement that fails, or is cancelled
midway, leaves no transaction open: the connection is rolled back, or dropped when its state is
unknown. psycopg's errors reach the caller as Django's (django.db.OperationalError: 503, as any
lost database).

Used only where it can see what the ORM sees: PostgreSQL, outside tests that wrap each test in a
transaction of the main thread (RELAY_DB_THREAD_SENSITIVE), and unless RELAY_DB_LOOP_WRITES=0.
"""

from __future__ import annotations

import asyncio
import threading
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from django.conf import settings
from django.db import connections

_IDLE = 0  # psycopg.pq.TransactionStatus.IDLE
APPLICATION_NAME = "relay-loop"
OPENINGS, CLOSINGS = "openings", "closings"  # the lanes


@dataclass
class _Held:
    loop: asyncio.AbstractEventLoop
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    connection: object | None = None  # psycopg.AsyncConnection


_held: dict[tuple[asyncio.AbstractEventLoop, str], _Held] = {}
_guard = threading.Lock()  # loops of several threads (test servers) register at once
_wrappers: dict[str, object] = {}


def available(alias: str = "default") -> bool:
    """Whether writes may run on the loop's own connection (see the module docstring)."""
    return (getattr(settings, "RELAY_DB_LOOP_WRITES", True)
            and not getattr(settings, "RELAY_DB_THREAD_SENSITIVE", False)
            and settings.DATABASES[alias]["ENGINE"].endswith("postgresql"))


def wrapper(alias: str = "default"):
    """A Django DatabaseWrapper that never connects: what builds the SQL and prepares the values
    (field.get_db_prep_save, db_type) needs of a connection, without a thread's own."""
    found = _wrappers.get(alias)
    if found is None:
        found = _wrappers[alias] = connections.create_connection(alias)
    return found


async def execute_sets(sql: str, params, lane: str = OPENINGS) -> list[list | None]:
    """Run sql (one or several statements) on this loop's connection; the rows of each statement
    (None for a command). Raises Django's database errors."""
    async with session(lane) as execute:
        return await execute(sql, params)


@asynccontextmanager
async def session(lane: str = OPENINGS):
    """This loop's connection of `lane`, held for several round trips in a row (a transaction over
    two): `await execute(sql, params)` gives each statement's rows, as execute_sets does. Leaving the
    block by an error, or with a transaction still open, rolls it back: nothing is kept half-done."""
    held = _state(lane)
    async with held.lock:
        with wrapper().wrap_database_errors:
            connection = held.connection
            if connection is None or connection.closed or connection.broken:
                connection = held.connection = await _connect()

            async def execute(sql: str, params) -> list[list | None]:
                async with connection.cursor() as cursor:
                    await cursor.execute(sql, params)
                    return await _sets(cursor)

            try:
                yield execute
            except BaseException:
                await _after_failure(held)
                raise
            if connection.info.transaction_status != _IDLE:
                await _after_failure(held)


async def _sets(cursor) -> list[list | None]:
    from psycopg.pq import ExecStatus

    sets = []
    while True:
        sets.append(await cursor.fetchall() if cursor.pgresult.status == ExecStatus.TUPLES_OK else None)
        if not cursor.nextset():
            return sets


async def _connect():
    import psycopg

    params = wrapper().get_connection_params()
    params.pop("cursor_factory", None)
    params.setdefault("application_name", APPLICATION_NAME)  # told apart from the threads' in pg_stat_activity
    return await psycopg.AsyncConnection.connect(**params, autocommit=True, cursor_factory=psycopg.AsyncClientCursor)


async def _after_failure(held: _Held) -> None:
    """Leave no transaction open behind a failed statement; a connection in doubt is dropped."""
    connection = held.connection
    if connection is None or connection.closed:
        return
    try:
        if connection.info.transaction_status != _IDLE:
            await asyncio.shield(connection.execute("ROLLBACK"))
        if connection.info.transaction_status == _IDLE:
            return
    except BaseException:  # noqa: BLE001, S110  (dropped below)
        pass
    held.connection = None
    connection.pgconn.finish()


def _state(lane: str = OPENINGS) -> _Held:
    loop = asyncio.get_running_loop()
    held = _held.get((loop, lane))
    if held is None:
        with _guard:
            for other in [other for other in _held if other[0].is_closed()]:
                _finish(_held.pop(other))  # the loops of finished test servers
            held = _held[(loop, lane)] = _Held(loop)
    return held


def _finish(held: _Held) -> None:
    connection, held.connection = held.connection, None
    if connection is not None and not connection.closed:
        connection.pgconn.finish()  # libpq's own close: needs no loop, and its loop may be gone


async def close_loop_connection() -> None:
    """Close this loop's connections (the server's shutdown)."""
    loop = asyncio.get_running_loop()
    for key in [key for key in _held if key[0] is loop]:
        held = _held.pop(key)
        if held.connection is not None:
            async with held.lock:
                await held.connection.close()


def close_all() -> None:
    """Close every loop's connection, from any thread (test teardown, process exit): the test
    database can be dropped only once nobody is connected."""
    with _guard:
        for held in _held.values():
            _finish(held)
        _held.clear()
