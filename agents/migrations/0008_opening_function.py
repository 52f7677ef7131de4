"""A PostgreSQL function for a run's opening (agents.actions.run_rows), the statement every first
token waits for: its plan is cached per connection, where the same SQL sent as text was parsed and
planned on every run (an opening alone, bench/opening_rows.py: 0.73-0.86 ms before, 0.50-0.62 ms after).

The rows travel as JSON arrays of objects named by column, read with each table's own row type
(jsonb_populate_recordset), so a column added later needs no new version of this function as long
as the rows sent carry it; a missing key is NULL, refused by a NOT NULL column as an INSERT would.
"""

from django.db import migrations

# p_new: new conversations; p_continued: [{"id", "user_id"}] of continued ones (locked in one order, so
# two batches never deadlock, then moved up their owner's list at p_moved_at); p_turns: the messages,
# inserted only for the conversations found (a continued one that is not its caller's gets nothing).
# Returns the conversation ids that got their turns.
OPEN_RUNS = """
CREATE OR REPLACE FUNCTION agents_open_runs(p_new jsonb, p_continued jsonb, p_turns jsonb, p_moved_at timestamptz)
RETURNS uuid[] LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    opened uuid[];
BEGIN
    WITH new AS (
        INSERT INTO agents_conversation
        SELECT * FROM jsonb_populate_recordset(NULL::agents_conversation, p_new) RETURNING id
    ), mine AS (
        SELECT c.id FROM agents_conversation c
        WHERE (c.id, c.user_id) IN (SELECT k.id, k.user_id FROM jsonb_to_recordset(p_continued) AS k (id uuid, user_id bigint))
        ORDER BY c.id FOR UPDATE
    ), moved AS (
        UPDATE agents_conversation c SET updated_at = p_moved_at FROM mine WHERE c.id = mine.id RETURNING c.id
    ), turns AS (
        INSERT INTO agents_message
        SELECT m.* FROM jsonb_populate_recordset(NULL::agents_message, p_turns) m
        WHERE m.conversation_id IN (SELECT id FROM new UNION ALL SELECT id FROM moved)
        RETURNING conversation_id
    )
    SELECT array_agg(DISTINCT conversation_id) INTO opened FROM turns;
    RETURN coalesce(opened, '{}');
END $$;
"""

UNINSTALL = "DROP FUNCTION IF EXISTS agents_open_runs(jsonb, jsonb, jsonb, timestamptz)"


def install(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(OPEN_RUNS, params=None)


def uninstall(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(UNINSTALL, params=None)


class Migration(migrations.Migration):

    dependencies = [
        ("agents", "0007_conversation_tree"),
    ]

    operations = [migrations.RunPython(install, uninstall)]
