"""Three of agents_message's eight indexes go: every run inserts two messages and updates one
(its closing changes the indexed status, so the update goes through every index too).

- conversation_id alone: (conversation_id, created_at) serves the same lookups.
- status and request_id keep their plain index (renamed, now declared in Meta.indexes: db_index's
  names are too long for one) and lose the varchar_pattern_ops copy PostgreSQL got from db_index,
  for LIKE queries that nothing makes.
"""

from django.db import migrations, models

DROPPED = ("agents_message_conversation_id_42823add", "agents_message_status_d2d2650a_like",
           "agents_message_request_id_53200df8_like")
# (column, db_index's name, Meta's name)
RENAMED = (("status", "agents_message_status_d2d2650a", "agents_message_status_idx"),
           ("request_id", "agents_message_request_id_53200df8", "agents_message_request_idx"))


def drop(apps, schema_editor):
    for name in DROPPED:
        schema_editor.execute(f"DROP INDEX IF EXISTS {schema_editor.quote_name(name)}")
    for column, old, new in RENAMED:
        _rename(schema_editor, column, old, new)


def restore(apps, schema_editor):
    quote = schema_editor.quote_name
    for column, old, new in RENAMED:
        _rename(schema_editor, column, new, old)
    schema_editor.execute(f"CREATE INDEX {quote(DROPPED[0])} ON agents_message (conversation_id)")
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(f"CREATE INDEX {quote(DROPPED[1])} ON agents_message (status varchar_pattern_ops)")
        schema_editor.execute(f"CREATE INDEX {quote(DROPPED[2])} ON agents_message (request_id varchar_pattern_ops)")


def _rename(schema_editor, column: str, old: str, new: str) -> None:
    quote = schema_editor.quote_name
    if schema_editor.connection.vendor == "postgresql":  # the index is kept, not built again
        schema_editor.execute(f"ALTER INDEX {quote(old)} RENAME TO {quote(new)}")
        return
    schema_editor.execute(f"DROP INDEX {quote(old)}")  # SQLite cannot rename an index
    schema_editor.execute(f"CREATE INDEX {quote(new)} ON agents_message ({quote(column)})")


class Migration(migrations.Migration):

    dependencies = [
        ("agents", "0008_opening_function"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="message", name="conversation",
                    field=models.ForeignKey(db_index=False, on_delete=models.deletion.CASCADE,
                                            related_name="messages", to="agents.conversation"),
                ),
                migrations.AlterField(
                    model_name="message", name="status",
                    field=models.CharField(choices=[("running", "Running"), ("complete", "Complete"),
                                                    ("cancelled", "Cancelled"), ("error", "Error"),
                                                    ("budget_stop", "Budget Stop"), ("interrupted", "Interrupted")],
                                           default="complete", max_length=16),
                ),
                migrations.AlterField(
                    model_name="message", name="request_id",
                    field=models.CharField(blank=True, max_length=64),
                ),
                migrations.AddIndex(
                    model_name="message",
                    index=models.Index(fields=["status"], name="agents_message_status_idx"),
                ),
                migrations.AddIndex(
                    model_name="message",
                    index=models.Index(fields=["request_id"], name="agents_message_request_idx"),
                ),
            ],
            database_operations=[migrations.RunPython(drop, restore)],
        ),
    ]
