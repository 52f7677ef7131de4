"""Events as plain data, JSON lines and CSV: shared by the export API and manage.py export_audit."""

import csv
import io
import json

from audit.chain import iso

COLUMNS = ["sequence", "time", "actor_id", "actor_name", "api_key_prefix", "organization_id", "action", "resource",
           "status", "ip", "user_agent", "request_id", "metadata", "prev_hash", "hash", "version"]


def event_dict(event) -> dict:
    """What a reader of the trail needs; ids are the recorded ones (they survive deletions)."""
    return {
        "sequence": event.sequence, "time": iso(event.time), "actor_id": event.actor_ref,
        "actor_name": event.actor_name, "api_key_prefix": event.api_key_prefix,
        "organization_id": event.organization_ref, "action": event.action, "resource": event.resource,
        "status": event.status, "ip": event.ip, "user_agent": event.user_agent, "request_id": event.request_id,
        "metadata": event.metadata, "prev_hash": event.prev_hash, "hash": event.hash,
        "version": event.version,  # the hash format (audit.chain), to verify an export elsewhere
    }


def iter_jsonl(events):
    for event in events:
        yield json.dumps(event_dict(event), ensure_ascii=False, separators=(",", ":")) + "\n"


def _csv_cell(value):
    if isinstance(value, dict):
        return json.dumps(value, ensure_ascii=False, sort_keys=True)
    text = "" if value is None else str(value)
    # A cell starting like a formula runs in spreadsheets; user agents and names are attacker text.
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def iter_csv(events):
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(COLUMNS)
    for event in events:
        row = event_dict(event)
        writer.writerow([_csv_cell(row[column]) for column in COLUMNS])
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
    if buffer.getvalue():
        yield buffer.getvalue()
