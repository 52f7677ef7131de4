"""Database triggers that make the audit table append-only underneath the ORM.

UPDATE is refused except the one the database itself makes when a user or organization is
deleted (ON DELETE SET NULL on the `actor`/`organization` pointers, every other column
unchanged). DELETE is refused unless the transaction says it is pruning: on PostgreSQL
`SET LOCAL relay.audit_prune = 'on'` (see audit.services.prune); SQLite has no session
settings, so pruning drops and recreates its DELETE trigger inside its own transaction.
TRUNCATE (PostgreSQL) is refused the same way.

Migration 0002 installs these, 0003 reinstalls them with the `version` column. Changing the SQL
later needs a new migration that reinstalls (a migration runs the SQL of its own time: pass it
the columns it knew).
"""

TABLE = "audit_auditevent"
PRUNE_SETTING = "relay.audit_prune"

# Everything the hash covers, plus the row's identity: none of it may ever change.
# (COLUMNS_0002: what migration 0002 knew, before the hash format version existed.)
COLUMNS_0002 = (
    "id", "sequence", "time", "actor_ref", "actor_name", "api_key_prefix", "organization_ref", "action",
    "resource", "status", "ip", "user_agent", "request_id", "metadata", "prev_hash", "hash",
)
IMMUTABLE_COLUMNS = (*COLUMNS_0002, "version")
_POINTERS = ("actor_id", "organization_id")


def _only_pointers_cleared(same: str, columns=IMMUTABLE_COLUMNS) -> str:
    unchanged = " AND ".join(f"NEW.{c} {same} OLD.{c}" for c in columns)
    cleared = " AND ".join(f"(NEW.{p} IS NULL OR NEW.{p} {same} OLD.{p})" for p in _POINTERS)
    return f"({unchanged} AND {cleared})"


_POSTGRES_TRIGGERS = [
    f"DROP TRIGGER IF EXISTS audit_event_append_only ON {TABLE}",
    f"""CREATE TRIGGER audit_event_append_only BEFORE UPDATE OR DELETE ON {TABLE}
        FOR EACH ROW EXECUTE FUNCTION audit_event_guard()""",
    f"DROP TRIGGER IF EXISTS audit_event_no_truncate ON {TABLE}",
    f"""CREATE TRIGGER audit_event_no_truncate BEFORE TRUNCATE ON {TABLE}
        FOR EACH STATEMENT EXECUTE FUNCTION audit_event_guard()""",
]

def _guard_function(name: str, columns, setting: str, rows: str) -> str:
    """A PL/pgSQL trigger function: UPDATE only clears pointers; DELETE/TRUNCATE only with `setting` on."""
    return f"""
    CREATE OR REPLACE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'UPDATE' AND {_only_pointers_cleared("IS NOT DISTINCT FROM", columns)} THEN
            RETURN NEW;
        END IF;
        IF TG_OP IN ('DELETE', 'TRUNCATE') AND current_setting('{setting}', true) = 'on' THEN
            RETURN OLD;
        END IF;
        RAISE EXCEPTION '{rows} are append-only: % refused', TG_OP
            USING ERRCODE = 'integrity_constraint_violation';
    END;
    $$
    """


def postgres_install(columns=IMMUTABLE_COLUMNS) -> list[str]:
    return [_guard_function("audit_event_guard", columns, PRUNE_SETTING, "audit events"), *_POSTGRES_TRIGGERS]


POSTGRES_UNINSTALL = [
    f"DROP TRIGGER IF EXISTS audit_event_append_only ON {TABLE}",
    f"DROP TRIGGER IF EXISTS audit_event_no_truncate ON {TABLE}",
    "DROP FUNCTION IF EXISTS audit_event_guard()",
]

SQLITE_DELETE_TRIGGER = f"""
    CREATE TRIGGER IF NOT EXISTS audit_event_no_delete BEFORE DELETE ON {TABLE}
    BEGIN SELECT RAISE(ABORT, 'audit events are append-only: DELETE refused'); END
"""
SQLITE_DROP_DELETE_TRIGGER = "DROP TRIGGER IF EXISTS audit_event_no_delete"
SQLITE_UNINSTALL = ["DROP TRIGGER IF EXISTS audit_event_no_update", SQLITE_DROP_DELETE_TRIGGER]


def sqlite_install(columns=IMMUTABLE_COLUMNS) -> list[str]:
    return [f"""
    CREATE TRIGGER IF NOT EXISTS audit_event_no_update BEFORE UPDATE ON {TABLE}
    WHEN NOT {_only_pointers_cleared("IS", columns)}
    BEGIN SELECT RAISE(ABORT, 'audit events are append-only: UPDATE refused'); END
    """, SQLITE_DELETE_TRIGGER]


SQLITE_INSTALL = sqlite_install()


def _run(schema_editor, statements_by_vendor: dict) -> None:
    for statement in statements_by_vendor.get(schema_editor.connection.vendor, []):
        schema_editor.execute(statement, params=None)  # None: the SQL has literal % signs


def _install(schema_editor, columns) -> None:
    # SQLite drops first: CREATE TRIGGER IF NOT EXISTS would keep an older guard.
    _run(schema_editor, {"postgresql": postgres_install(columns), "sqlite": SQLITE_UNINSTALL + sqlite_install(columns)})


def install_0002(apps, schema_editor) -> None:
    _install(schema_editor, COLUMNS_0002)


def install(apps, schema_editor) -> None:
    """The current guard. On SQLite, run it after any operation that remakes the table (that drops triggers)."""
    _install(schema_editor, IMMUTABLE_COLUMNS)


def uninstall(apps, schema_editor) -> None:
    _run(schema_editor, {"postgresql": POSTGRES_UNINSTALL, "sqlite": SQLITE_UNINSTALL})


# The queue of events waiting for the append lock (audit.models.PendingAuditEvent, PostgreSQL
# only: SQLite's single writer never queues). A queued event is not chained yet, so the
# database guards it instead: no UPDATE but the pointers' ON DELETE SET NULL, and DELETE only by
# the drain, which says so with `SET LOCAL relay.audit_drain = 'on'` in its own transaction.
PENDING_TABLE = "audit_pendingauditevent"
DRAIN_SETTING = "relay.audit_drain"
PENDING_COLUMNS = tuple(c for c in COLUMNS_0002 if c not in ("sequence", "prev_hash", "hash"))

POSTGRES_PENDING_INSTALL = [
    _guard_function("audit_pending_guard", PENDING_COLUMNS, DRAIN_SETTING, "queued audit events"),
    f"""CREATE TRIGGER audit_pending_guard BEFORE UPDATE OR DELETE ON {PENDING_TABLE}
        FOR EACH ROW EXECUTE FUNCTION audit_pending_guard()""",
    f"""CREATE TRIGGER audit_pending_no_truncate BEFORE TRUNCATE ON {PENDING_TABLE}
        FOR EACH STATEMENT EXECUTE FUNCTION audit_pending_guard()""",
]
POSTGRES_PENDING_UNINSTALL = [
    f"DROP TRIGGER IF EXISTS audit_pending_guard ON {PENDING_TABLE}",
    f"DROP TRIGGER IF EXISTS audit_pending_no_truncate ON {PENDING_TABLE}",
    "DROP FUNCTION IF EXISTS audit_pending_guard()",
]


def install_pending(apps, schema_editor) -> None:
    _run(schema_editor, {"postgresql": POSTGRES_PENDING_INSTALL})


def uninstall_pending(apps, schema_editor) -> None:
    _run(schema_editor, {"postgresql": POSTGRES_PENDING_UNINSTALL})


# The checkpoints (audit.models.AuditCheckpoint, AuditHeadCheckpoint, PostgreSQL): never updated;
# deleted only by pruning (old checkpoints of the head) and `flush`, under the same setting as events.
CHECKPOINT_TABLES = ("audit_auditcheckpoint", "audit_auditheadcheckpoint")

POSTGRES_CHECKPOINT_INSTALL = [
    f"""
    CREATE OR REPLACE FUNCTION audit_checkpoint_guard() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP IN ('DELETE', 'TRUNCATE') AND current_setting('{PRUNE_SETTING}', true) = 'on' THEN
            RETURN OLD;
        END IF;
        RAISE EXCEPTION 'audit checkpoints are append-only: % refused', TG_OP
            USING ERRCODE = 'integrity_constraint_violation';
    END;
    $$
    """,
    *(statement for table in CHECKPOINT_TABLES for statement in (
        f"""CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table}
            FOR EACH ROW EXECUTE FUNCTION audit_checkpoint_guard()""",
        f"""CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table}
            FOR EACH STATEMENT EXECUTE FUNCTION audit_checkpoint_guard()""",
    )),
]
POSTGRES_CHECKPOINT_UNINSTALL = [
    *(statement for table in CHECKPOINT_TABLES for statement in (
        f"DROP TRIGGER IF EXISTS {table}_append_only ON {table}",
        f"DROP TRIGGER IF EXISTS {table}_no_truncate ON {table}",
    )),
    "DROP FUNCTION IF EXISTS audit_checkpoint_guard()",
]


def install_checkpoints(apps, schema_editor) -> None:
    _run(schema_editor, {"postgresql": POSTGRES_CHECKPOINT_INSTALL})


def uninstall_checkpoints(apps, schema_editor) -> None:
    _run(schema_editor, {"postgresql": POSTGRES_CHECKPOINT_UNINSTALL})
