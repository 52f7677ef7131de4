"""Rows written with plain SQL on PostgreSQL, on the hot path of every model call.

Each ORM bulk_create or update costs its compiler, Django's cursor wrapper and a round trip; a
model call's closing rows are few and always of the same shape, so their SQL is built once per
shape and cached, a batch's rows travel as VALUES (a few) or one array per column, and their values
are the fields' own `get_db_prep_save`, so they reach PostgreSQL exactly as through the ORM. The
opening's rows go to a PostgreSQL function instead, as JSON (`Columns.as_json`, agents.actions.run_rows).
`Columns` is that for any model (agents.actions.run_rows uses it too); `insert_usages` is the
usage records' insert; `client_cursor` and `result_sets` serve a round trip of several statements.
"""

from __future__ import annotations

import json
import re
import uuid

from django.db import models
from psycopg.pq import ExecStatus

# Built SQL by (statement, shape): the parts a batch (relay.eventloop.group_commit) needs; a few.
_sql_cache: dict[tuple, str] = {}
# Up to this many rows travel as VALUES of typed scalars, more as one array per column: an idle
# instance's opening (a question and its answer) binds each value as it is, where two-element
# arrays cost psycopg a literal per array and PostgreSQL an array parse per column.
SCALAR_ROWS = 2


def shape(count: int) -> int:
    """The shape of `count` rows for cached SQL: 0, 1 ... SCALAR_ROWS as VALUES, or many (one more)."""
    return min(count, SCALAR_ROWS + 1)


def cached_sql(key: tuple, build) -> str:
    """The SQL `build()` makes for `key`, built once."""
    sql = _sql_cache.get(key)
    if sql is None:
        sql = _sql_cache[key] = build()
    return sql


def cast(field, connection) -> str:
    """The column's type for a cast: an untyped value would be text. No varchar length, so an
    over-long value is refused as through the ORM, not truncated."""
    return re.sub(r"\(\d+\)$", "", field.db_type(connection))


def client_cursor(connection):
    """A Django cursor that binds parameters client-side: a round trip that carries several statements
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


def result_sets(cursor) -> list[list | None]:
    """The rows of each statement of a multi-statement execute on a Django cursor (None for a command),
    read from psycopg's cursor under Django's and the metrics' wrappers."""
    raw, sets = cursor.cursor, []
    while True:
        sets.append(raw.fetchall() if raw.pgresult.status == ExecStatus.TUPLES_OK else None)
        if not raw.nextset():
            return sets


class Columns:
    """Some concrete fields of a model, as plain SQL wants them: names, and rows as a FROM item.

    Up to SCALAR_ROWS rows travel as VALUES of typed scalars (an idle instance's case: psycopg
    caches the conversion of a short statement with few parameters); more as one typed array per
    column, so the statement's text and its number of parameters do not grow with the batch:
    psycopg converts it once, and PostgreSQL parses a short query, where a VALUES list of a batch
    cost both a new conversion of every parameter's placeholder on every execute."""

    def __init__(self, model, attnames: tuple[str, ...], *, fields: tuple = ()):
        """`model`'s fields named `attnames`, or the `fields` given (of any model), into `model`'s table."""
        by_name = {field.attname: field for field in model._meta.concrete_fields}
        self.table = model._meta.db_table
        self.fields = fields or tuple(by_name[name] for name in attnames)
        self.names = ", ".join(field.column for field in self.fields)
        self._sources = {}
        self._defaults = None
        self._json_fields = None

    def source(self, connection, count: int) -> str:
        """`count` rows as a FROM item (to be aliased): `(VALUES (%s::uuid, ...), ...)` or `unnest(%s::uuid[], ...)`."""
        key = shape(count)
        if key not in self._sources:
            casts = [cast(field, connection) for field in self.fields]
            row = "(" + ", ".join(f"%s::{c}" for c in casts) + ")"
            self._sources[key] = ("(VALUES " + ", ".join([row] * key) + ")" if key <= SCALAR_ROWS
                                  else "unnest(" + ", ".join(f"%s::{c}[]" for c in casts) + ")")
        return self._sources[key]

    def params(self, connection, rows: list[dict]) -> list:
        """The parameters of `source(connection, len(rows))`: the rows' values, prepared as the ORM
        would save them; a field missing from a row takes its default (callable defaults, such as
        a primary key's, must be given)."""
        if self._defaults is None:
            self._defaults = {field.attname: field.get_db_prep_save(field.get_default(), connection)
                              for field in self.fields}
        defaults = self._defaults
        if len(rows) <= SCALAR_ROWS:
            return [field.get_db_prep_save(row[field.attname], connection) if field.attname in row
                    else defaults[field.attname] for row in rows for field in self.fields]
        arrays = []
        for field in self.fields:
            name, prepare, default = field.attname, field.get_db_prep_save, defaults[field.attname]
            arrays.append([prepare(row[name], connection) if name in row else default for row in rows])
        return arrays

    def as_json(self, rows: list[dict]) -> str:
        """The rows as one JSON array of objects named by column, for a PostgreSQL function's
        jsonb_populate_recordset: each value as the field prepares it for a query (a missing field its
        default), written as its text (UUIDs, timestamps to the microsecond, decimals exactly). A value
        already of the type the field prepares to (a str for a text column, an int for an integer one,
        None) is written as it is: the opening's rows are mostly such, and preparing each cost a call
        through the field's conversion on the way to every first token."""
        fields = self._json_fields
        if fields is None:  # one assignment: the loop and the writers' threads may ask at once
            fields = self._json_fields = tuple(
                (field.attname, field.column, field.get_prep_value, _prepared_types(field),
                 field.get_prep_value(field.get_default())) for field in self.fields)
        return json.dumps([{column: (value if value is None or type(value) in ready else prepare(value))
                            if (value := row.get(name, _MISSING)) is not _MISSING else default
                            for name, column, prepare, ready, default in fields} for row in rows],
                          default=str, separators=(",", ":"))


_MISSING = object()


def _prepared_types(field) -> tuple[type, ...]:
    """The types a field's get_prep_value returns unchanged (its Python type; a UUID as itself)."""
    if isinstance(field, models.ForeignKey):
        return _prepared_types(field.target_field)
    if isinstance(field, models.UUIDField):
        return (uuid.UUID,)
    if isinstance(field, models.BooleanField):
        return (bool,)
    if isinstance(field, (models.CharField, models.TextField)):
        return (str,)
    if isinstance(field, models.IntegerField):
        return (int,)
    if isinstance(field, models.FloatField):
        return (float,)
    return ()


_COLUMNS = None
TOOL_FIELDS = ("tool", "duration_ms", "tokens", "cost")


def _columns():
    """(usage record, tool usage), built once (one assignment: the writers' threads may ask at once)."""
    global _COLUMNS
    if _COLUMNS is None:
        from billing.models import ToolUsage, UsageRecord

        usage = Columns(UsageRecord, tuple(f.attname for f in UsageRecord._meta.concrete_fields if not f.primary_key))
        # The tool usages are joined to their records by the run's id (unique), not a returned one.
        tool = Columns(ToolUsage, (), fields=(UsageRecord._meta.get_field("request_id"),
                                              *(ToolUsage._meta.get_field(name) for name in TOOL_FIELDS)))
        _COLUMNS = (usage, tool)
    return _COLUMNS


def _usage_sql(connection, records: int, tools: int) -> str:
    usage, tool = _columns()
    selected = ", ".join(_kept_reference(field) for field in usage.fields)
    sql = (f"WITH u AS (INSERT INTO {usage.table} ({usage.names}) "  # noqa: S608 (no user input)
           f"SELECT {selected} FROM {usage.source(connection, records)} AS r ({usage.names}) "
           f"RETURNING id, request_id)")
    if tools:
        sql += (f", t AS (INSERT INTO {tool.table} (usage_id, {', '.join(TOOL_FIELDS)}) "  # noqa: S608
                f"SELECT u.id, {', '.join(f'v.{f.column}' for f in tool.fields[1:])} "
                f"FROM {tool.source(connection, tools)} AS v ({tool.names}) JOIN u ON u.request_id = v.request_id)")
    return sql + " SELECT request_id, id FROM u"  # noqa: S608 (no user input)


def insert_usages(connection, usages: list[tuple[object, list]]) -> None:
    """Insert the usage records and their tool usages (unsaved ToolUsage instances) in one statement;
    each record gets its primary key. IntegrityError (a run recorded already) as through the ORM."""
    sql, params = usages_statement(connection, usages)
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        usages_inserted(usages, cursor.fetchall(), connection.alias)


def usages_statement(connection, usages: list[tuple[object, list]]) -> tuple[str, list]:
    """insert_usages' statement and parameters, for a caller that sends it itself (`connection`
    only prepares the values); its rows go to `usages_inserted`."""
    usage, tool = _columns()
    params = usage.params(connection, [record.__dict__ for record, _ in usages])
    calls = [{**call.__dict__, "request_id": record.request_id} for record, calls in usages for call in calls]
    if calls:
        params += tool.params(connection, calls)
    records, tools = shape(len(usages)), shape(len(calls))
    return cached_sql(("usage", records, tools), lambda: _usage_sql(connection, records, tools)), params


def usages_inserted(usages: list[tuple[object, list]], rows: list, alias: str) -> None:
    """Each record gets its primary key from the statement's rows (request id, id)."""
    ids = dict(rows)
    for record, _ in usages:
        record.pk = ids[record.request_id]
        record._state.adding, record._state.db = False, alias


def _kept_reference(field) -> str:
    """The column as the record stores it. A reference the model sets to NULL when its row is deleted
    (the run's team) is looked up: a row deleted while the run was answered is stored as NULL, as the
    deletion would have left it, instead of failing the closing's foreign key every time it is tried."""
    if isinstance(field, models.ForeignKey) and field.remote_field.on_delete is models.SET_NULL:
        target = field.related_model._meta
        key = target.pk.column
        return f"(SELECT kept.{key} FROM {target.db_table} kept WHERE kept.{key} = r.{field.column})"  # noqa: S608
    return f"r.{field.column}"
