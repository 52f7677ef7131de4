"""A run's rows in plain SQL on PostgreSQL: its opening in one round trip, a batch's answers in one statement.

The opening stands before every first token. Through the ORM it was five round trips (BEGIN, SET
LOCAL, the conversation, the messages, COMMIT), each with Django's cursor wrapper and compiler;
here it is one multi-statement execute on a client-binding cursor (server-side binding refuses
several statements with parameters) around one call of a PostgreSQL function (agents_open_runs,
migration 0008), a batch's rows as three JSON parameters whatever its size: sent as text, the
statement the function holds was parsed and planned on every run, most of the opening's time on
the server. A turn continuing a conversation locks it, if it is the caller's, in the same statement
that inserts the turn's messages: they are inserted only for the conversations so found, and
`open_rows` names the openings that found none (the caller refuses them; nothing of theirs was written).

The closing's answers, one per run of a batch, are one `UPDATE ... FROM unnest(...)` (VALUES for one or two),
sent on a DB thread or, with the closing's other statements, on the event loop's connection.
"""

from __future__ import annotations

import json

from django.db import transaction

from audit.pg_append import roll_back
from billing.pg_rows import Columns, cached_sql, client_cursor, result_sets, shape
from relay.eventloop import pg

_COLUMNS = None
ANSWERED = ("model", "content", "input_tokens", "output_tokens", "cost", "latency_ms", "ttft_ms", "quality_score",
            "quality_auto", "tool_calls", "status", "error_code")


def _columns():
    """(new conversation, message, answer, updated_at), built once (one assignment: the writers'
    threads may ask at once)."""
    global _COLUMNS
    if _COLUMNS is None:
        from agents.models import Conversation, Message

        _COLUMNS = (Columns(Conversation, tuple(f.attname for f in Conversation._meta.concrete_fields)),
                    Columns(Message, tuple(f.attname for f in Message._meta.concrete_fields)),
                    Columns(Message, ("id", *ANSWERED)), Conversation._meta.get_field("updated_at"))
    return _COLUMNS


def opening_statement(connection, new: list[dict], continued: list[tuple], turns: list[dict], now,
                      own: bool) -> tuple[str, list]:
    """(sql, params) of an opening; `own`: the SQL carries its own transaction. `connection` only
    prepares (it need not be connected).

    One call of agents_open_runs (migration 0008), its rows as JSON: the function's plan is cached
    by the connection, where the statement it holds, sent as text, was parsed and planned every time."""
    conversation, turn, _, moved = _columns()
    kept = json.dumps([{"id": str(pair[0]), "user_id": pair[1]} for pair in continued])
    params = [conversation.as_json(new), kept, turn.as_json(turns),
              moved.get_db_prep_save(now, connection) if continued else None]
    # The commit need not wait for its WAL flush: see agents.actions.runs._open_many.
    return (_OWN_OPENING if own else _OPENING), params


_OPENING = "SELECT agents_open_runs(%s::jsonb, %s::jsonb, %s::jsonb, %s::timestamptz)"
_OWN_OPENING = f"BEGIN; SET LOCAL synchronous_commit TO OFF; {_OPENING}; COMMIT"


async def open_rows_on_loop(new: list[dict], continued: list[tuple], turns: list[dict], now) -> set:
    """open_rows in a transaction of its own, on the event loop's connection (relay.eventloop.pg)."""
    sql, params = opening_statement(pg.wrapper(), new, continued, turns, now, own=True)
    sets = await pg.execute_sets(sql, params)
    return set(sets[-2][0][0])


def open_rows(connection, new: list[dict], continued: list[tuple], turns: list[dict], now) -> set:
    """Insert the new conversations and the turns, lock and move up the continued ones (id, user id);
    in a transaction of its own unless the caller's is open. Returns the conversation ids that got
    their turns: a continued one missing from it is not the user's (or no longer exists)."""
    own = not connection.in_atomic_block and connection.get_autocommit()
    sql, params = opening_statement(connection, new, continued, turns, now, own)
    if not own:
        with transaction.atomic(using=connection.alias), client_cursor(connection) as cursor:
            cursor.execute(sql, params)
            return set(cursor.fetchone()[0])
    try:
        with client_cursor(connection) as cursor:
            cursor.execute(sql, params)
            return set(result_sets(cursor)[-2][0][0])
    except BaseException:
        roll_back(connection)  # leave the connection idle, as Django expects it outside a transaction
        raise


def _answers_sql(connection, count: int) -> str:
    answer = _columns()[2]
    sets = ", ".join(f"{f.column} = v.{f.column}" for f in answer.fields[1:])
    return (f"UPDATE {answer.table} m SET {sets} FROM {answer.source(connection, count)} "  # noqa: S608
            f"AS v ({answer.names}) WHERE m.id = v.id")


def store_answers(connection, answers: list[dict]) -> None:
    """Each answer message's closing fields (ANSWERED, and its id), in one statement."""
    with connection.cursor() as cursor:
        cursor.execute(*answers_statement(connection, answers))


def answers_statement(connection, answers: list[dict]) -> tuple[str, list]:
    """store_answers' (sql, params); `connection` only prepares (it need not be connected)."""
    count = shape(len(answers))
    sql = cached_sql(("answers", count), lambda: _answers_sql(connection, count))
    return sql, _columns()[2].params(connection, answers)
