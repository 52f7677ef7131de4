"""The PostgreSQL side of appending, in as few round trips (and as little CPU) as it takes.

An append is the hot path of every audited action, and on a busy machine its cost is CPU: the
writer's Python, each round trip's system calls, the server's parse and plan. So the statements
are PL/pgSQL functions (migration 0006), whose plans each connection caches:
`audit_lock_or_queue` tries the append lock and, if another transaction holds it, queues the
events; if it got the lock it returns the head, read in a statement of its own (so it sees what
the previous holder committed). `audit_chain` inserts the linked events. The events travel as
one JSON literal (one value for libpq to quote, however many events and fields), and the
statements go to libpq through psycopg's wait loop only (`exchange`), not through Django's and
psycopg's cursors, which cost several times the exchange itself.

In a transaction, the append lock is a transaction lock and record() sends one round trip
before its caller's commit (two when chained). Outside one, record() runs its own transactions:
its first round trip is BEGIN, the function, COMMIT and, when the events were queued, the
attempt to become the drainer (after the commit, audit.services.drain); there the lock is a
session lock, so that it outlives that COMMIT, and the chained path's second round trip inserts,
commits and lets go of it. Queued, an append is one round trip; chained, two.

A drain batch is two round trips whatever its size: the lock, the head and the oldest queued
rows; then `audit_drain_move`, which deletes them from the queue and inserts them on the chain
with the hashes computed here (only ids and hashes travel), and the commit.
"""

from __future__ import annotations

import json

from psycopg import ClientCursor, generators
from psycopg.errors import error_from_result
from psycopg.pq import Escaping, ExecStatus, TransactionStatus

from audit.chain import FORMAT_VERSION, compute_hash
from audit.models import AuditEvent, PendingAuditEvent
from audit.triggers import DRAIN_SETTING

# Advisory lock key for appends ("RELAYAUD"); any constant unique to this purpose. Migration 0006's
# audit_lock_or_queue has it written in.
APPEND_LOCK_KEY = 0x52454C4159415544
# pg_advisory_lock key of the one drainer. Session-level locks (this one, and the append lock outside
# a transaction): a pooler in transaction mode (pgbouncer) between Relay and PostgreSQL would lose them.
DRAIN_LOCK_KEY = APPEND_LOCK_KEY + 1
# Events chained per drain transaction: bounds its lock hold and memory.
DRAIN_BATCH = 1000

_QUEUE = PendingAuditEvent._meta.db_table
_CHAIN = AuditEvent._meta.db_table
_FIELDS = tuple(f for f in PendingAuditEvent._meta.concrete_fields if f.attname != "id")
RECORDED = tuple(f.attname for f in _FIELDS)  # what a queued event holds, in column order
_COLUMNS = ", ".join(f.column for f in _FIELDS)
HEAD_SQL = f"SELECT sequence, hash FROM {_CHAIN} ORDER BY sequence DESC LIMIT 1"  # noqa: S608 (no user input)


# --- Statements below Django's cursor ---------------------------------------------------------------

def _raw(connection):
    if connection.connection is None:
        connection.ensure_connection()
    connection.validate_thread_sharing()
    return connection.connection


def _logged(connection, sql) -> None:
    if connection.queries_logged:  # as Django's debug cursor: tests count the append's statements
        connection.queries_log.append({"sql": sql if isinstance(sql, str) else sql.decode(), "time": "0.000"})


def exchange(connection, sql: bytes) -> list:
    """Send `sql` (one or more statements, values already quoted) in one round trip; its results.

    libpq's query and psycopg's wait loop only: psycopg's cursor (query conversion, result
    machinery) costs several times the CPU of the exchange itself. What the cursors would do
    here is done: a broken transaction is refused, a transaction is begun first when Django's
    autocommit is off, errors are psycopg's (so Django's, through its wrapper), queries are logged.
    """
    raw = _raw(connection)
    connection.validate_no_broken_transaction()
    with connection.wrap_database_errors, raw.lock:
        if not raw.autocommit and raw.pgconn.transaction_status == TransactionStatus.IDLE:
            raw.wait(raw._start_query())  # the BEGIN psycopg's cursor would send (tests/audit/test_append_cost.py)
        pgconn = raw.pgconn
        pgconn.send_query(sql)
        results = raw.wait(generators.execute(pgconn))
        for result in results:
            if result.status == ExecStatus.FATAL_ERROR:
                raise error_from_result(result, encoding=pgconn._encoding)
    _logged(connection, sql)
    return results


def _literal(connection, text: str) -> bytes:
    return Escaping(_raw(connection).pgconn).escape_literal(text.encode())  # libpq's PQescapeLiteral


def _cursor(connection) -> ClientCursor:
    """psycopg's client-side binding cursor on the connection, made once per database connection
    (client-side: the drain's round trips carry several statements, which server-side binding,
    relay/settings.py: DB_SERVER_SIDE_BINDING, refuses)."""
    raw = _raw(connection)
    made = connection.__dict__.get("_audit_cursor")
    if made is None or made.connection is not raw or made.closed:
        made = connection._audit_cursor = ClientCursor(raw)
    return made


def run(connection, sql: str, params=None) -> ClientCursor:
    """Execute on psycopg's cursor (for rows that need its loaders), without Django's wrappers."""
    cursor = _cursor(connection)
    connection.validate_no_broken_transaction()
    with connection.wrap_database_errors:
        cursor.execute(sql, params)
    _logged(connection, sql)
    return cursor


def result_sets(cursor) -> list[list | None]:
    """The rows of each statement of a multi-statement execute (None for a command)."""
    sets = []
    while True:
        sets.append(cursor.fetchall() if cursor.pgresult.status == ExecStatus.TUPLES_OK else None)
        if not cursor.nextset():
            return sets


def in_transaction(connection) -> bool:
    return connection.connection.info.transaction_status != TransactionStatus.IDLE


def roll_back(connection) -> None:
    """After a failure in a transaction record() or the drain began itself: leave the connection idle."""
    if connection.connection is not None and not connection.connection.closed and in_transaction(connection):
        exchange(connection, b"ROLLBACK")


# --- The append -----------------------------------------------------------------------------------

# audit_lock_or_queue and audit_chain (migration 0006) take the events as one JSON array of
# objects named by column: one literal, however many events.
_QUEUE_IN_TRANSACTION = b"SELECT * FROM audit_lock_or_queue(%s, false)"
# Outside a transaction: one round trip whether the events are queued or the lock is taken. The
# lock is then a session lock (the transaction ends here); queued, the events are committed and
# this process tries to become the drainer (after the commit: see audit.services.drain).
_QUEUE_ALONE = (b"BEGIN; SELECT * FROM audit_lock_or_queue(%s, true); COMMIT; SELECT CASE WHEN "
                b"current_setting('relay.audit_queued') = 'on' THEN pg_try_advisory_lock(" + b"%d) ELSE false END"
                % DRAIN_LOCK_KEY)
_CHAIN_IN_TRANSACTION = b"SELECT * FROM audit_chain(%s)"
_CHAIN_ALONE = b"BEGIN; SELECT * FROM audit_chain(%s); COMMIT; SELECT pg_advisory_unlock(" + b"%d)" % APPEND_LOCK_KEY
_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def _recorded(event) -> dict:
    values = {name: getattr(event, name) for name in RECORDED}
    values["time"] = values["time"].isoformat()
    return values


def queued_json(events) -> str:
    """The events as audit_lock_or_queue takes them (queued as they are, if it cannot lock)."""
    return _encode([_recorded(event) for event in events])


def chained_json(events) -> str:
    """The linked events (sequence and hashes set) as audit_chain takes them."""
    rows = []
    for event in events:
        row = _recorded(event)
        row.update(sequence=event.sequence, prev_hash=event.prev_hash, hash=event.hash, version=event.version)
        rows.append(row)
    return _encode(rows)


def chained_ids(events, ids: dict[int, int], alias: str) -> None:
    """Each inserted event gets its id ({sequence: id}, as audit_chain returns them)."""
    for event in events:
        event.pk, event._state.adding, event._state.db = ids[event.sequence], False, alias


def lock_or_queue(connection, events, alone: bool) -> tuple[bool, tuple | None, bool]:
    """Try the append lock; if another transaction holds it, queue the events. (Whether the lock was
    taken, the head if it was and the chain has one, whether this process is now the drainer.)

    `alone`: record() outside a transaction; the lock is a session lock, let go of by chain_insert
    (or give_up_session_lock), and queued events are committed.
    """
    events_json = _literal(connection, queued_json(events))
    if alone:
        _, result, _, drainer = exchange(connection, _QUEUE_ALONE % events_json)
        drainer = drainer.get_value(0, 0) == b"t"
    else:
        result, drainer = exchange(connection, _QUEUE_IN_TRANSACTION % events_json)[0], False
    got, sequence = result.get_value(0, 0) == b"t", result.get_value(0, 1)
    return got, (int(sequence), result.get_value(0, 2).decode()) if sequence is not None else None, drainer


def chain_insert(connection, events, alone: bool) -> None:
    """Insert the linked events; each gets its id. `alone`: in a transaction of their own, after
    whose commit the session lock is let go of."""
    rows_json = _literal(connection, chained_json(events))
    result = exchange(connection, (_CHAIN_ALONE if alone else _CHAIN_IN_TRANSACTION) % rows_json)[1 if alone else 0]
    chained_ids(events, {int(result.get_value(n, 0)): int(result.get_value(n, 1)) for n in range(result.ntuples)},
                connection.alias)


def give_up_session_lock(connection) -> None:
    """After a failure outside a transaction: roll back and let go of the append lock in case it was
    taken (a session lock outlives a rollback: kept, it would stop every append but the queue's).
    A lost connection took its locks with it."""
    if connection.connection is None or connection.connection.closed:
        return
    roll_back(connection)
    exchange(connection, b"SELECT pg_advisory_unlock(%d)" % APPEND_LOCK_KEY)


# --- The drain ------------------------------------------------------------------------------------

# One round trip: the drain's commit need not wait for the flush (audit.services), its DELETE is
# allowed by the queue's trigger, it holds the append lock; then the head and the oldest queued rows,
# each statement with its own snapshot, so both are read after the lock is granted.
_DRAIN_BEGIN_SQL = (f"BEGIN; SET LOCAL synchronous_commit TO OFF; SET LOCAL {DRAIN_SETTING} = 'on'; "  # noqa: S608
                    f"SELECT pg_advisory_xact_lock({APPEND_LOCK_KEY}); {HEAD_SQL}; "
                    f"SELECT id, {_COLUMNS} FROM {_QUEUE} ORDER BY id LIMIT {DRAIN_BATCH}")
# audit_drain_move refuses to move fewer rows than it was given (a gap must never commit); the
# arrays travel as literals. COMMIT goes with it: it runs only if the move succeeded.
_MOVE_SQL = b"SELECT audit_drain_move('%s', '%s', '%s', %d, %d::smallint); COMMIT"
_ANY_QUEUED_SQL = f"; SELECT EXISTS (SELECT 1 FROM {_QUEUE})"  # noqa: S608 (no user input)


class _Queued:
    """A queued row as compute_hash reads it."""

    __slots__ = (*RECORDED, "sequence", "version")

    def __init__(self, row, sequence):
        for name, value in zip(RECORDED, row, strict=True):
            setattr(self, name, value)
        if isinstance(self.metadata, str):  # Django loads jsonb as text
            self.metadata = json.loads(self.metadata)
        self.sequence, self.version = sequence, FORMAT_VERSION


def _array(values) -> bytes:
    # ids and hex digests (ints, and hashes computed here): nothing in them needs quoting.
    return ("{" + ",".join(map(str, values)) + "}").encode()


def drain_batch(connection, head_fallback) -> int:
    """Move the oldest queued events (up to DRAIN_BATCH) onto the chain; in a transaction of its own."""
    try:
        cursor = run(connection, _DRAIN_BEGIN_SQL)
        *_, head, queued = result_sets(cursor)
        if not queued:
            exchange(connection, b"COMMIT")
            return 0
        sequence, prev_hash = head[0] if head else head_fallback()
        ids, prevs, hashes = [], [], []
        for n, row in enumerate(queued, 1):
            ids.append(row[0])
            prevs.append(prev_hash)
            prev_hash = compute_hash(prev_hash, _Queued(row[1:], sequence + n))
            hashes.append(prev_hash)
        exchange(connection, _MOVE_SQL % (_array(ids), _array(prevs), _array(hashes), sequence, FORMAT_VERSION))
        return len(ids)
    except BaseException:
        roll_back(connection)
        raise


def take_drain_lock(connection, wait: bool) -> bool:
    function = "pg_advisory_lock" if wait else "pg_try_advisory_lock"
    taken = exchange(connection, f"SELECT {function}({DRAIN_LOCK_KEY})".encode())[0].get_value(0, 0)
    return wait or taken == b"t"


def release_drain_lock(connection, *, look: bool) -> bool:
    """Let go of the drain lock; with `look`, also say whether anything is queued (read after letting go)."""
    results = exchange(connection, f"SELECT pg_advisory_unlock({DRAIN_LOCK_KEY}){_ANY_QUEUED_SQL if look else ''}"
                       .encode())
    return look and results[-1].get_value(0, 0) == b"t"
