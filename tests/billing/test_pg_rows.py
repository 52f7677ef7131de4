"""billing.pg_rows.Columns.as_json: the rows a PostgreSQL function reads with jsonb_populate_recordset.
It writes a value of the field's own Python type as it is, and prepares every other value as the
field does: the JSON must be exactly what preparing every value would give."""

import datetime
import decimal
import json
import uuid

from agents.models import Message
from billing.pg_rows import Columns

COLUMNS = Columns(Message, tuple(f.attname for f in Message._meta.concrete_fields))


def prepared_by_every_field(rows: list[dict]) -> list[dict]:
    """The rule without the shortcut: every value through its field's get_prep_value."""
    return json.loads(json.dumps([
        {field.column: field.get_prep_value(row[field.attname] if field.attname in row else field.get_default())
         for field in COLUMNS.fields} for row in rows], default=str))


def test_values_of_every_kind_are_written_as_their_field_prepares_them():
    moment = datetime.datetime(2026, 12, 7, 13, 0, 0, 123456, tzinfo=datetime.UTC)
    rows = [
        {"id": uuid.uuid4(), "conversation_id": str(uuid.uuid4()), "parent_id": None, "role": "user",
         "content": "naïve ☃ \"quoted\"", "cost": decimal.Decimal("0.0000012345"), "input_tokens": 7,
         "quality_score": 0.5, "feedback": -1, "tool_calls": [{"name": "calc", "arguments": "{}"}],
         "created_at": moment},
        # Values not of the field's type: prepared as the field would (a str UUID in its canonical
        # form, a float cost as a decimal, a str count as an int).
        {"id": str(uuid.uuid4()).upper(), "conversation_id": uuid.uuid4(), "role": "assistant",
         "cost": 0.25, "input_tokens": "12", "quality_auto": 1, "created_at": moment},
    ]

    written = json.loads(COLUMNS.as_json(rows))

    assert written == prepared_by_every_field(rows)
    assert written[1]["id"] == rows[1]["id"].lower()
    assert written[1]["input_tokens"] == 12 and written[1]["cost"] == "0.25"
    assert written[0]["created_at"] == "2026-12-07 13:00:00.123456+00:00"
    assert written[1]["status"] == "complete" and written[1]["tool_calls"] == []  # the defaults
