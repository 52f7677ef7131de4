"""A run's rows in plain SQL on PostgreSQL: its opening in one round trip, a batch's answers in one statement.

The opening stands before every first token. Through the ORM it was five round trips (BEGIN, SET
LOCAL, the conversation, the messages, COMMIT), each with Django's cursor wrapper and compiler;
here it is one multi-statement execute on a client-binding cursor (server-side binding refuses
several statements with parameters), its SQL built once per shape. A turn continuing a
conversation locks it, if it is the caller's, in the same statement that inserts the turn's
messages: they are inserted only for the conversations so found, and `open_rows` names the
openings that found none (the caller refuses them; nothing of theirs was written).

The closing's answers, one per run of a batch, are one `UPDATE ... FROM (VALUES ...)`.
"""

from __future__ import annotations

from django.db import transaction

from audit.pg_append import client_cursor, result_sets, roll_back
from billing.pg_rows import Columns, cached_sql, cast

_NEW = _CONTINUED = _TURN = _ANSWER = _MOVED = None
ANSWERED = ("model", "content", "input_tokens", "output_tokens", "cost", "latency_ms", "ttft_ms", "quality_score",
            "quality_auto", "tool_calls", "status", "error_code")


def _columns():
    global _NEW, _CONTINUED, _TURN, _ANSWER, _MOVED
    if _NEW is None:
        from agents.models import Conversation, Message

        _MOVED = Conversation._meta.get_field("updated_at")
        _NEW = Columns(Conversation, tuple(f.attname for f in Conversation._meta.concrete_fields))
        _CONTINUED = Columns(Conversation, ("id", "user_id"))
        _TURN = Columns(Message, tuple(f.attname for f in Message._meta.concrete_fields))
        _ANSWER = Columns(Message, ("id", *ANSWERED))
    return _NEW, _CONTINUED, _TURN, _ANSWER


def _opening_sql(connection, new: int, continued: int, turns: int, own: bool) -> str:
    conversation, mine, turn, _ = _columns()
    table = conversation.table
    ctes, found = [], []
    if new:
        ctes.append(f"new AS (INSERT INTO {table} ({conversation.names}) "  # noqa: S608 (no user input)
                    f"VALUES {conversation.rows(connection, new)} RETURNING id)")
        found.append("SELECT id FROM new")
    if continued:
        # Locked in one order (no deadlock between two batches), then moved up its owner's list.
        ctes.append(f"mine AS (SELECT id FROM {table} WHERE (id, user_id) IN "  # noqa: S608 (no user input)
                    f"(VALUES {mine.rows(connection, continued)}) ORDER BY id FOR UPDATE), "
                    f"moved AS (UPDATE {table} c SET updated_at = %s::{cast(_MOVED, connection)} "
                    f"FROM mine WHERE c.id = mine.id RETURNING c.id)")
        found.append("SELECT id FROM moved")
    sql = (f"WITH {', '.join(ctes)} INSERT INTO {turn.table} ({turn.names}) "  # noqa: S608 (no user input)
           f"SELECT * FROM (VALUES {turn.rows(connection, turns)}) AS m ({turn.names}) "
           f"WHERE m.conversation_id IN ({' UNION ALL '.join(found)}) RETURNING conversation_id")
    if own:
        # The commit need not wait for its WAL flush: see agents.actions.runs._open_many.
        sql = f"BEGIN; SET LOCAL synchronous_commit TO OFF; {sql}; COMMIT"
    return sql


def open_rows(connection, new: list[dict], continued: list[tuple], turns: list[dict], now) -> set:
    """Insert the new conversations and the turns, lock and move up the continued ones (id, user id);
    in a transaction of its own unless the caller's is open. Returns the conversation ids that got
    their turns: a continued one missing from it is not the user's (or no longer exists)."""
    conversation, mine, turn, _ = _columns()
    own = not connection.in_atomic_block and connection.get_autocommit()
    params = []
    for row in new:
        params += conversation.values(connection, row)
    if continued:
        for pair in continued:
            params += mine.values(connection, {"id": pair[0], "user_id": pair[1]})
        params.append(_MOVED.get_db_prep_save(now, connection))
    for row in turns:
        params += turn.values(connection, row)
    sql = cached_sql(("open", len(new), len(continued), len(turns), own),
                     lambda: _opening_sql(connection, len(new), len(continued), len(turns), own))
    if not own:
        with transaction.atomic(using=connection.alias), client_cursor(connection) as cursor:
            cursor.execute(sql, params)
            return {row[0] for row in cursor.fetchall()}
    try:
        with client_cursor(connection) as cursor:
            cursor.execute(sql, params)
            return {row[0] for row in result_sets(cursor)[-2]}
    except BaseException:
        roll_back(connection)  # leave the connection idle, as Django expects it outside a transaction
        raise


def _answers_sql(connection, count: int) -> str:
    answer = _columns()[3]
    sets = ", ".join(f"{f.column} = v.{f.column}" for f in answer.fields[1:])
    return (f"UPDATE {answer.table} m SET {sets} FROM (VALUES {answer.rows(connection, count)}) "  # noqa: S608
            f"AS v ({answer.names}) WHERE m.id = v.id")


def store_answers(connection, answers: list[dict]) -> None:
    """Each answer message's closing fields (ANSWERED, and its id), in one statement."""
    answer = _columns()[3]
    params = []
    for row in answers:
        params += answer.values(connection, row)
    sql = cached_sql(("answers", len(answers)), lambda: _answers_sql(connection, len(answers)))
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
