"""The PostgreSQL side of appending, in as few statements (and as little Python) as it takes.

An append is the hot path of every audited action, and on a busy machine its cost is CPU: each
statement costs Django's cursor wrapper, psycopg's quoting and the server's parse and plan, so
record() sends one round trip before its transaction commits (`LOCK_OR_QUEUE`): a statement that
tries the append lock and, if another transaction holds it, queues the events in the same
statement, and beside it a read of the head that the events are chained after if the lock was
taken (a separate statement, so it sees what the previous holder committed). Outside a
transaction record() runs its own: BEGIN travels with that round trip, COMMIT with the next
(the chained INSERT, or the attempt to become the drainer), so an append is two round trips.
Rows go to psycopg as plain values, the metadata serialised once; no model save, no signals.

A drain batch is three round trips whatever its size: the lock, the head and the oldest queued
rows; one statement that deletes them from the queue and inserts them on the chain with the
hashes computed here (only ids and hashes travel back); the commit.
"""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

from psycopg.pq import ExecStatus, TransactionStatus

from audit.chain import FORMAT_VERSION, compute_hash
from audit.models import AuditEvent, PendingAuditEvent
from audit.triggers import DRAIN_SETTING

# pg_advisory_xact_lock key for appends ("RELAYAUD"); any constant unique to this purpose.
APPEND_LOCK_KEY = 0x52454C4159415544
# pg_advisory_lock key of the one drainer (session-level, beside APPEND_LOCK_KEY's transaction lock).
# Session-level: a pooler in transaction mode (pgbouncer) between Relay and PostgreSQL would lose it.
DRAIN_LOCK_KEY = APPEND_LOCK_KEY + 1
# Events chained per drain transaction: bounds its lock hold and memory.
DRAIN_BATCH = 1000

_QUEUE = PendingAuditEvent._meta.db_table
_CHAIN = AuditEvent._meta.db_table
_FIELDS = tuple(f for f in PendingAuditEvent._meta.concrete_fields if f.attname != "id")
RECORDED = tuple(f.attname for f in _FIELDS)  # what a queued event holds, in column order
_COLUMNS = ", ".join(f.column for f in _FIELDS)
_CHAINED_COLUMNS = f"{_COLUMNS}, sequence, prev_hash, hash, version"
_METADATA = RECORDED.index("metadata")
HEAD_SQL = f"SELECT sequence, hash FROM {_CHAIN} ORDER BY sequence DESC LIMIT 1"  # noqa: S608 (no user input)
# Built SQL by (kind, number of events, own transaction): groups (appending_together) vary in size.
_sql_cache: dict[tuple[str, int, bool], str] = {}
_SQL_CACHE_SIZE = 256


def _casts(connection) -> list[str]:
    # The queued rows are selected from VALUES, whose untyped literals would be text: say each
    # column's type (without a varchar length, so an over-long value is refused, not truncated).
    return [re.sub(r"\(\d+\)$", "", f.db_type(connection)) for f in _FIELDS]


def _bound_cache() -> None:
    if len(_sql_cache) >= _SQL_CACHE_SIZE:
        _sql_cache.clear()


def lock_or_queue_sql(connection, count: int, begin: bool) -> str:
    """Try the append lock; if it is taken, queue `count` rows in the same statement. Then the head."""
    key = ("queue", count, begin)
    if key not in _sql_cache:
        _bound_cache()
        row = "(" + ", ".join(f"%s::{cast}" for cast in _casts(connection)) + ")"
        _sql_cache[key] = (
            f"{'BEGIN; ' if begin else ''}"  # noqa: S608 (no user input)
            f"WITH lock AS (SELECT pg_try_advisory_xact_lock({APPEND_LOCK_KEY}) AS got), "
            f"queued AS (INSERT INTO {_QUEUE} ({_COLUMNS}) SELECT v.* FROM lock, "
            f"(VALUES {', '.join([row] * count)}) AS v WHERE NOT lock.got) "
            f"SELECT got FROM lock; {HEAD_SQL}")
    return _sql_cache[key]


def chain_insert_sql(count: int, commit: bool) -> str:
    key = ("chain", count, commit)
    if key not in _sql_cache:
        _bound_cache()
        row = "(" + ", ".join(["%s"] * (len(_FIELDS) + 4)) + ")"
        _sql_cache[key] = (f"INSERT INTO {_CHAIN} ({_CHAINED_COLUMNS}) VALUES "  # noqa: S608 (no user input)
                           f"{', '.join([row] * count)} RETURNING id{'; COMMIT' if commit else ''}")
    return _sql_cache[key]


def _recorded(event) -> list:
    values = [getattr(event, name) for name in RECORDED]
    values[_METADATA] = json.dumps(values[_METADATA], ensure_ascii=False)
    return values


def queue_params(events) -> list:
    params = []
    for event in events:
        params += _recorded(event)
    return params


def chain_params(events) -> list:
    params = []
    for event in events:
        params += _recorded(event)
        params += (event.sequence, event.prev_hash, event.hash, event.version)
    return params


def result_sets(cursor) -> list[list | None]:
    """The rows of each statement of a multi-statement execute (None for a command).

    On psycopg's own cursor, under Django's and the metrics' wrappers: every attribute read
    through them is a Python call or two.
    """
    raw, sets = cursor.cursor, []
    while True:
        sets.append(raw.fetchall() if raw.pgresult.status == ExecStatus.TUPLES_OK else None)
        if not raw.nextset():
            return sets


def client_cursor(connection):
    """A cursor that binds parameters client-side: the append's round trips carry several statements
    with parameters, which server-side binding (relay/settings.py: DB_SERVER_SIDE_BINDING) refuses."""
    if not connection.settings_dict.get("OPTIONS", {}).get("server_side_binding"):
        return connection.cursor()
    from django.db.backends.postgresql.base import TIMESTAMPTZ_OID, Cursor  # Cursor: psycopg's ClientCursor
    from django.db.backends.postgresql.psycopg_any import register_tzloader
    from psycopg.pq import Format

    connection.ensure_connection()
    with connection.wrap_database_errors:
        raw = Cursor(connection.connection)
        # as Django's create_cursor(): timestamps read in the connection's time zone
        if connection.timezone != connection.connection.adapters.get_loader(TIMESTAMPTZ_OID, Format.TEXT).timezone:
            register_tzloader(connection.timezone, raw)
        return connection._prepare_cursor(raw)


def in_transaction(connection) -> bool:
    return connection.connection.info.transaction_status != TransactionStatus.IDLE


def roll_back(connection) -> None:
    """After a failure in a transaction record() or the drain began itself: leave the connection idle."""
    if connection.connection is not None and not connection.connection.closed and in_transaction(connection):
        with client_cursor(connection) as cursor:
            cursor.execute("ROLLBACK")


# --- The drain ------------------------------------------------------------------------------------

# One round trip: the drain's commit need not wait for the flush (audit.services), its DELETE is
# allowed by the queue's trigger, it holds the append lock; then the head and the oldest queued rows,
# each statement with its own snapshot, so both are read after the lock is granted.
_DRAIN_BEGIN_SQL = (f"BEGIN; SET LOCAL synchronous_commit TO OFF; SET LOCAL {DRAIN_SETTING} = 'on'; "  # noqa: S608
                    f"SELECT pg_advisory_xact_lock({APPEND_LOCK_KEY}); {HEAD_SQL}; "
                    f"SELECT id, {_COLUMNS} FROM {_QUEUE} ORDER BY id LIMIT {DRAIN_BATCH}")
# Moves exactly the rows hashed: the queue's trigger refuses any change but a pointer going NULL
# (which the hash does not cover), and only the drainer deletes. The arrays travel as literals.
_MOVE_SQL = (f"WITH h AS (SELECT * FROM unnest(%s::bigint[], %s::text[], %s::text[]) WITH ORDINALITY "  # noqa: S608
             f"AS h(id, prev_hash, hash, n)), "
             f"moved AS (DELETE FROM {_QUEUE} q USING h WHERE q.id = h.id "
             f"RETURNING {', '.join(f'q.{f.column}' for f in _FIELDS)}, h.n, h.prev_hash, h.hash) "
             f"INSERT INTO {_CHAIN} ({_CHAINED_COLUMNS}) "
             f"SELECT {_COLUMNS}, %s::bigint + n, prev_hash, hash, %s FROM moved")


_ANY_QUEUED_SQL = f"; SELECT EXISTS (SELECT 1 FROM {_QUEUE})"  # noqa: S608 (no user input)


def _array(values) -> str:
    # ids and hex digests: nothing in them needs quoting inside an array literal.
    return "{" + ",".join(map(str, values)) + "}"


def drain_batch(connection, head_fallback) -> int:
    """Move the oldest queued events (up to DRAIN_BATCH) onto the chain; in a transaction of its own."""
    try:
        with client_cursor(connection) as cursor:
            cursor.execute(_DRAIN_BEGIN_SQL)
            *_, head, queued = result_sets(cursor)
            if not queued:
                cursor.execute("COMMIT")
                return 0
            sequence, prev_hash = head[0] if head else head_fallback()
            ids, prevs, hashes = [], [], []
            for n, row in enumerate(queued, 1):
                event = SimpleNamespace(**dict(zip(RECORDED, row[1:], strict=True)), sequence=sequence + n,
                                        version=FORMAT_VERSION)
                if isinstance(event.metadata, str):
                    event.metadata = json.loads(event.metadata)
                ids.append(row[0])
                prevs.append(prev_hash)
                prev_hash = compute_hash(prev_hash, event)
                hashes.append(prev_hash)
            cursor.execute(_MOVE_SQL, [_array(ids), _array(prevs), _array(hashes), sequence, FORMAT_VERSION])
            if cursor.rowcount != len(ids):  # cannot happen (see _MOVE_SQL); a gap must never commit
                raise RuntimeError(f"audit drain moved {cursor.rowcount} of {len(ids)} queued events")
            cursor.execute("COMMIT")
        return len(ids)
    except BaseException:
        roll_back(connection)
        raise


def take_drain_lock(connection, wait: bool) -> bool:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {'pg_advisory_lock' if wait else 'pg_try_advisory_lock'}({DRAIN_LOCK_KEY})")
        return wait or cursor.fetchone()[0]


def release_drain_lock(connection, *, look: bool) -> bool:
    """Let go of the drain lock; with `look`, also say whether anything is queued (read after letting go)."""
    with client_cursor(connection) as cursor:
        cursor.execute(f"SELECT pg_advisory_unlock({DRAIN_LOCK_KEY})" + (_ANY_QUEUED_SQL if look else ""))
        return bool(look and result_sets(cursor)[-1][0][0])
