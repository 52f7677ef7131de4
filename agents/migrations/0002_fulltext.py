"""Full-text search over document chunks: a GIN index on PostgreSQL, an FTS5 table on SQLite."""

from django.db import migrations

POSTGRES_UP = [
    "CREATE INDEX agents_chunk_fts ON agents_documentchunk USING GIN (to_tsvector('english', text))",
]
POSTGRES_DOWN = ["DROP INDEX IF EXISTS agents_chunk_fts"]

# An external-content FTS5 table kept in step with the chunk table by triggers.
SQLITE_UP = [
    "CREATE VIRTUAL TABLE agents_chunk_fts USING fts5(text, content='agents_documentchunk', content_rowid='id',"
    " tokenize='porter unicode61')",
    "CREATE TRIGGER agents_chunk_fts_ai AFTER INSERT ON agents_documentchunk BEGIN"
    " INSERT INTO agents_chunk_fts(rowid, text) VALUES (new.id, new.text); END",
    "CREATE TRIGGER agents_chunk_fts_ad AFTER DELETE ON agents_documentchunk BEGIN"
    " INSERT INTO agents_chunk_fts(agents_chunk_fts, rowid, text) VALUES ('delete', old.id, old.text); END",
    "CREATE TRIGGER agents_chunk_fts_au AFTER UPDATE ON agents_documentchunk BEGIN"
    " INSERT INTO agents_chunk_fts(agents_chunk_fts, rowid, text) VALUES ('delete', old.id, old.text);"
    " INSERT INTO agents_chunk_fts(rowid, text) VALUES (new.id, new.text); END",
]
SQLITE_DOWN = [
    "DROP TRIGGER IF EXISTS agents_chunk_fts_ai", "DROP TRIGGER IF EXISTS agents_chunk_fts_ad",
    "DROP TRIGGER IF EXISTS agents_chunk_fts_au", "DROP TABLE IF EXISTS agents_chunk_fts",
]


def _run(statements_by_vendor):
    def run(apps, schema_editor):
        for statement in statements_by_vendor.get(schema_editor.connection.vendor, []):
            schema_editor.execute(statement)
    return run


class Migration(migrations.Migration):
    dependencies = [("agents", "0001_initial")]
    operations = [
        migrations.RunPython(
            _run({"postgresql": POSTGRES_UP, "sqlite": SQLITE_UP}),
            _run({"postgresql": POSTGRES_DOWN, "sqlite": SQLITE_DOWN}),
        )
    ]
