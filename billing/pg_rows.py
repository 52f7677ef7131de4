"""Rows written with plain SQL on PostgreSQL, on the hot path of every model call.

Each ORM bulk_create or update costs its compiler, Django's cursor wrapper and a round trip; a
model call's opening and closing rows are few and always of the same shape, so their SQL is
built once per shape (the number of rows) and cached, and their values are the fields' own
`get_db_prep_save`, so they reach PostgreSQL exactly as through the ORM. `Columns` is that for
any model (agents.actions.run_rows uses it too); `insert_usages` is the usage records' insert.
"""

from __future__ import annotations

import re

# Built SQL by (statement, shape): batches (relay.eventloop.group_commit) vary in size.
_sql_cache: dict[tuple, str] = {}
_SQL_CACHE_SIZE = 256


def cached_sql(key: tuple, build) -> str:
    """The SQL `build()` makes for `key`, built once."""
    sql = _sql_cache.get(key)
    if sql is None:
        if len(_sql_cache) >= _SQL_CACHE_SIZE:
            _sql_cache.clear()
        sql = _sql_cache[key] = build()
    return sql


def cast(field, connection) -> str:
    """The column's type for a cast: untyped VALUES would be text. No varchar length, so an
    over-long value is refused as through the ORM, not truncated."""
    return re.sub(r"\(\d+\)$", "", field.db_type(connection))


class Columns:
    """Some concrete fields of a model, as plain SQL wants them: names, typed placeholders, prepared values."""

    def __init__(self, model, attnames: tuple[str, ...]):
        fields = {field.attname: field for field in model._meta.concrete_fields}
        self.table = model._meta.db_table
        self.fields = tuple(fields[name] for name in attnames)
        self.names = ", ".join(field.column for field in self.fields)
        self._row = ""
        self._defaults = None

    def row(self, connection) -> str:
        """One row's placeholders, each cast to its column's type."""
        if not self._row:
            self._row = "(" + ", ".join(f"%s::{cast(field, connection)}" for field in self.fields) + ")"
        return self._row

    def rows(self, connection, count: int) -> str:
        return ", ".join([self.row(connection)] * count)

    def values(self, connection, row: dict) -> list:
        """A row's values in column order, prepared as the ORM would save them; a field missing from
        `row` takes its default (callable defaults, such as a primary key's, must be given)."""
        if self._defaults is None:
            self._defaults = {field.attname: field.get_db_prep_save(field.get_default(), connection)
                              for field in self.fields}
        return [field.get_db_prep_save(row[field.attname], connection) if field.attname in row
                else self._defaults[field.attname] for field in self.fields]


_USAGE = None
_TOOL = None


def _columns():
    global _USAGE, _TOOL
    if _USAGE is None:
        from billing.models import ToolUsage, UsageRecord

        _USAGE = Columns(UsageRecord, tuple(f.attname for f in UsageRecord._meta.concrete_fields
                                            if not f.primary_key))
        # the tool calls are joined to their records by the run's id (unique), not a returned one
        _TOOL = Columns(ToolUsage, ("tool", "duration_ms", "tokens", "cost"))
    return _USAGE, _TOOL


def _usage_sql(connection, records: int, tools: int) -> str:
    usage, tool = _columns()
    sql = f"WITH u AS (INSERT INTO {usage.table} ({usage.names}) VALUES {usage.rows(connection, records)} "  # noqa: S608
    sql += "RETURNING id, request_id)"
    if tools:
        request_id = cast(usage.fields[0].model._meta.get_field("request_id"), connection)
        row = f"(%s::{request_id}, " + tool.row(connection)[1:]
        sql += (f", t AS (INSERT INTO {tool.table} (usage_id, {tool.names}) "  # noqa: S608 (no user input)
                f"SELECT u.id, {', '.join(f'v.{f.column}' for f in tool.fields)} "
                f"FROM (VALUES {', '.join([row] * tools)}) AS v (request_id, {tool.names}) "
                f"JOIN u ON u.request_id = v.request_id)")
    return sql + " SELECT request_id, id FROM u"  # noqa: S608 (no user input)


def insert_usages(connection, usages: list[tuple[object, list]]) -> None:
    """Insert the usage records and their tool usages (unsaved ToolUsage instances) in one statement;
    each record gets its primary key. IntegrityError (a run recorded already) as through the ORM."""
    usage, tool = _columns()
    params, tool_params, tools = [], [], 0
    for record, calls in usages:
        params += usage.values(connection, record.__dict__)
        for call in calls:
            tool_params.append(record.request_id)
            tool_params += tool.values(connection, call.__dict__)
            tools += 1
    sql = cached_sql(("usage", len(usages), tools), lambda: _usage_sql(connection, len(usages), tools))
    with connection.cursor() as cursor:
        cursor.execute(sql, params + tool_params)
        ids = dict(cursor.fetchall())
    for record, _ in usages:
        record.pk = ids[record.request_id]
        record._state.adding, record._state.db = False, connection.alias
