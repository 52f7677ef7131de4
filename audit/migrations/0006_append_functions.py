"""PostgreSQL functions for the append's hot statements (audit.pg_append): their plans are cached
per connection, where the equivalent SQL sent as text was parsed and planned on every call.

The SQL is this migration's own (the columns of its time); a later change reinstalls it in a new one.
"""

from django.db import migrations

APPEND_LOCK_KEY = 0x52454C4159415544  # audit.pg_append.APPEND_LOCK_KEY when written

_RECORDED = ("time, actor_id, actor_ref, actor_name, api_key_prefix, organization_id, organization_ref, action, "
             "resource, status, ip, user_agent, request_id, metadata")
_CHAINED = f"{_RECORDED}, sequence, prev_hash, hash, version"

# The events travel as one JSON array of objects named by column (one parameter, not a dozen
# per event); jsonb_populate_recordset gives each value its column's type, refusing an over-long
# string as a cast to the column would.
# p_session (record() outside a transaction): the lock is taken at session level, so that it outlives
# the transaction it was taken in (the head read) and is let go of after the chained events' commit;
# and the session remembers whether it queued, for the drain-lock attempt sent after that first
# transaction's COMMIT in the same round trip.
LOCK_OR_QUEUE = f"""
CREATE OR REPLACE FUNCTION audit_lock_or_queue(p_events jsonb, p_session boolean, OUT got boolean,
                                               OUT head_sequence bigint, OUT head_hash text)
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    IF p_session THEN
        got := pg_try_advisory_lock({APPEND_LOCK_KEY});
        PERFORM set_config('relay.audit_queued', CASE WHEN got THEN 'off' ELSE 'on' END, false);
    ELSE
        got := pg_try_advisory_xact_lock({APPEND_LOCK_KEY});
    END IF;
    IF got THEN
        -- A statement of its own in a VOLATILE function: its snapshot is taken now, after the
        -- lock was granted, so it sees what the previous holder committed.
        SELECT e.sequence, e.hash INTO head_sequence, head_hash
            FROM audit_auditevent e ORDER BY e.sequence DESC LIMIT 1;
    ELSE
        INSERT INTO audit_pendingauditevent ({_RECORDED})
        SELECT {_RECORDED} FROM jsonb_populate_recordset(NULL::audit_pendingauditevent, p_events)
            WITH ORDINALITY AS v ORDER BY v.ordinality;
    END IF;
END
$$
"""

# The linked events onto the chain (the caller holds the append lock); each one's id by its sequence.
CHAIN = f"""
CREATE OR REPLACE FUNCTION audit_chain(p_events jsonb) RETURNS TABLE(out_sequence bigint, out_id bigint)
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    RETURN QUERY INSERT INTO audit_auditevent ({_CHAINED})
        SELECT {_CHAINED} FROM jsonb_populate_recordset(NULL::audit_auditevent, p_events)
        RETURNING audit_auditevent.sequence, audit_auditevent.id;
END
$$
"""

# Moves exactly the rows hashed (the queue's trigger refuses any change but a pointer going
# NULL, and only the drainer deletes), and refuses to move fewer: a gap must never commit.
DRAIN_MOVE = """
CREATE OR REPLACE FUNCTION audit_drain_move(p_ids bigint[], p_prev text[], p_hash text[], p_after bigint,
                                            p_version smallint) RETURNS integer
LANGUAGE plpgsql VOLATILE AS $$
DECLARE moved integer;
BEGIN
    WITH h AS (SELECT * FROM unnest(p_ids, p_prev, p_hash) WITH ORDINALITY AS h(id, prev_hash, hash, n)),
    gone AS (DELETE FROM audit_pendingauditevent q USING h WHERE q.id = h.id
             RETURNING q.time, q.actor_id, q.actor_ref, q.actor_name, q.api_key_prefix, q.organization_id,
                       q.organization_ref, q.action, q.resource, q.status, q.ip, q.user_agent, q.request_id,
                       q.metadata, h.n, h.prev_hash, h.hash)
    INSERT INTO audit_auditevent (time, actor_id, actor_ref, actor_name, api_key_prefix, organization_id,
        organization_ref, action, resource, status, ip, user_agent, request_id, metadata, sequence, prev_hash,
        hash, version)
    SELECT time, actor_id, actor_ref, actor_name, api_key_prefix, organization_id, organization_ref, action,
           resource, status, ip, user_agent, request_id, metadata, p_after + n, prev_hash, hash, p_version
    FROM gone;
    GET DIAGNOSTICS moved = ROW_COUNT;
    IF moved <> cardinality(p_ids) THEN
        RAISE EXCEPTION 'audit drain moved % of % queued events', moved, cardinality(p_ids);
    END IF;
    RETURN moved;
END
$$
"""

UNINSTALL = ["DROP FUNCTION IF EXISTS audit_lock_or_queue(jsonb, boolean)", "DROP FUNCTION IF EXISTS audit_chain(jsonb)",
             "DROP FUNCTION IF EXISTS audit_drain_move(bigint[], text[], text[], bigint, smallint)"]


def install(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        for statement in (LOCK_OR_QUEUE, CHAIN, DRAIN_MOVE):
            schema_editor.execute(statement, params=None)


def uninstall(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        for statement in UNINSTALL:
            schema_editor.execute(statement, params=None)


class Migration(migrations.Migration):

    dependencies = [
        ("audit", "0005_pending_events"),
    ]

    operations = [migrations.RunPython(install, uninstall)]
