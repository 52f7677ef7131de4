"""Peak memory of one audit export through Relay's ASGI handler: streamed in batches, or read whole first.

    python bench/export_memory.py [--events 100000] [--rounds 2]      (DATABASE_URL and REDIS_URL honoured)

Runs in a throwaway database (Django's test database, created and dropped here). Inserts --events
audit events for one organization (admin_lists.py's plain-SQL insert, dummy hashes: nothing here
verifies the chain), then has its admin export all of them as JSON lines through
relay.eventloop.handler.RelayASGIHandler, in process, with tracemalloc's peak taken around each
export: as shipped (relay.http.RowsStreamingResponse: the rows read in batches on the request's
thread), and with that class's __aiter__ taken away, which is Django's own fallback for a sync
iterator under ASGI (the whole export read into one list before the first byte is sent). The two
take turns, --rounds times each. Last line: one JSON object.
"""

import argparse
import asyncio
import json
import os
import sys
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "relay.settings")
os.environ.setdefault("RELAY_BEHIND_TLS", "0")


def seed(connection, events: int) -> tuple[str, float]:
    """An organization, its admin's API key secret, and its events; the insert's seconds."""
    from admin_lists import insert_audit_events

    from accounts.actions.keys import create_api_key
    from accounts.actions.organizations import create_organization
    from accounts.actions.users import create_user

    org = create_organization("Export bench")
    admin = create_user("export-admin", organization=org, role="admin")
    return create_api_key(admin, "export").secret, insert_audit_events(connection, {org.pk: [admin]}, events)


def export_once(secret: str) -> dict:
    from django.urls import reverse

    from tests.support.asgi import asgi_request

    tracemalloc.start()
    started = time.perf_counter()
    sent = asyncio.run(asgi_request("GET", reverse("audit-export"), {"Authorization": f"Bearer {secret}"},
                                    keep_body=False))  # the client keeps nothing: the peak is the server's
    seconds = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return {"status": sent[0]["status"], "bytes": sent[1]["size"], "body_messages": sent[1]["messages"],
            "peak_mb": round(peak / 2**20, 1), "seconds": round(seconds, 2)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "bench"))
    from admin_lists import setup_database

    connection, old_name = setup_database()
    try:
        secret, insert_s = seed(connection, args.events)
        from relay.http import RowsStreamingResponse

        streamed_aiter = RowsStreamingResponse.__aiter__
        results = {"batches": [], "whole": []}
        export_once(secret)  # warms what the first request builds once (URLs, middleware, caches)
        for _ in range(args.rounds):
            for side in results:
                if side == "whole":
                    del RowsStreamingResponse.__aiter__  # StreamingHttpResponse's own: list() first
                try:
                    results[side].append(export_once(secret))
                finally:
                    RowsStreamingResponse.__aiter__ = streamed_aiter
                print(side, results[side][-1], flush=True)
    finally:
        if connection.vendor == "postgresql":  # the handler's DB threads still hold their connections
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                               "WHERE datname = current_database() AND pid <> pg_backend_pid()")
        connection.creation.destroy_test_db(old_name, verbosity=0)
    summary = {"benchmark": "export_memory", "database": connection.vendor, "events": args.events,
               "insert_s": round(insert_s, 1), "batch": RowsStreamingResponse.BATCH, "results": results}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
