"""Benchmark: Django admin list pages over 100,000 audit events and 100,000 usage records.

    python bench/admin_lists.py [--rows 100000] [--repeat 15]      (DATABASE_URL honoured)

Runs in a throwaway database (Django's test database, created and dropped here). Audit events
are append-only (their bulk_create is refused, triggers guard UPDATE/DELETE), so they go in by
plain SQL INSERT, which the triggers allow; their hashes are dummies (this database is thrown
away, nothing verifies its chain). Usage records go in by bulk_create. Then a superuser's
browser (Django's test client, sessions and middleware included) opens each changelist: plain,
filtered, searched and drilled by date. Target: every page p95 < 300 ms. Last line: one JSON object.
"""

import argparse
import json
import os
import random
import statistics
import sys
import time
import uuid
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "relay.settings")
os.environ.setdefault("RELAY_BEHIND_TLS", "0")
TARGET_MS = 300
ACTIONS = ["auth.login", "agent.run", "api_key.created", "api_key.revoked", "budget.set", "document.uploaded"]


def setup_database():
    import django
    from django.conf import settings

    django.setup()
    settings.ALLOWED_HOSTS = ["testserver"]
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    database = settings.DATABASES["default"]
    if database["ENGINE"].endswith("sqlite3"):
        database["TEST"]["NAME"] = str(ROOT / "var" / "bench-admin-lists.sqlite3")
    else:
        database["TEST"]["NAME"] = f"bench_admin_lists_{os.getpid()}"
    from django.db import connection

    old_name = database["NAME"]
    connection.creation.create_test_db(verbosity=0, autoclobber=True, serialize=False)
    return connection, old_name


def insert_audit_events(connection, org, users, count: int) -> float:
    rng, now = random.Random(11), time.time()
    columns = ["sequence", "time", "actor_id", "actor_ref", "actor_name", "api_key_prefix", "organization_id",
               "organization_ref", "action", "resource", "status", "ip", "user_agent", "request_id", "metadata",
               "prev_hash", "hash"]
    from datetime import UTC, datetime

    from django.db.models import Max

    from audit.models import AuditEvent

    start = (AuditEvent.objects.aggregate(m=Max("sequence"))["m"] or 0) + 1
    placeholders = ", ".join(["%s"] * len(columns))
    sql = f"INSERT INTO audit_auditevent ({', '.join(columns)}) VALUES ({placeholders})"  # noqa: S608 (constants)
    started = time.perf_counter()
    with connection.cursor() as cursor:
        batch = []
        for n in range(count):
            user = rng.choice(users)
            batch.append((start + n, datetime.fromtimestamp(now - (count - n) * 20, UTC), user.pk, user.pk,
                          user.username, "", org.pk, org.pk, rng.choice(ACTIONS), f"message:{uuid.uuid4()}",
                          rng.choice(["success"] * 18 + ["denied", "error"]), "10.0.0.1", "bench",
                          uuid.uuid4().hex[:32], "{}", "0" * 64, f"{n:064x}"))
            if len(batch) == 5000:
                cursor.executemany(sql, batch)
                batch = []
        if batch:
            cursor.executemany(sql, batch)
    return time.perf_counter() - started


def insert_usage(org, users, count: int) -> float:
    from django.utils import timezone

    from billing.models import ModelPrice, UsageRecord

    prices = list(ModelPrice.objects.filter(model__in=["gpt-4o", "gpt-4o-mini", "local-mini"]))
    rng, now = random.Random(7), timezone.now()
    started = time.perf_counter()
    batch = []
    for n in range(count):
        user, price = rng.choice(users), rng.choice(prices)
        batch.append(UsageRecord(
            organization=org, team_id=user.team_id, user=user, agent=rng.choice(["math", "code", "rag", "vision"]),
            model=price.model, price=price, input_tokens=rng.randint(10, 2000), output_tokens=rng.randint(1, 800),
            cost=Decimal(rng.randint(1, 50_000_000)) / 10**9, status=rng.choice(["complete"] * 9 + ["cancelled"]),
            complete=True, latency_ms=rng.randint(50, 5000), request_id=f"bench-{n}",
            created_at=now - timedelta(seconds=rng.randint(0, 60 * 86400))))
        if len(batch) == 5000:
            UsageRecord.objects.bulk_create(batch)
            batch = []
    UsageRecord.objects.bulk_create(batch)
    return time.perf_counter() - started


def pages(org, users) -> dict:
    from django.utils import timezone

    today = timezone.now()
    audit, usage = "/admin/audit/auditevent/", "/admin/billing/usagerecord/"
    return {
        "audit": audit,
        "audit_page_50": audit + "?p=50",
        "audit_status_denied": audit + "?status__exact=denied",
        "audit_action_org": audit + f"?action__exact=budget.set&organization__id__exact={org.pk}",
        "audit_search_actor": audit + f"?q={users[3].username}",
        "audit_search_request_id": audit + "?q=0123456789abcdef",
        "audit_date_drill": audit + f"?time__year={today.year}&time__month={today.month}",
        "usage": usage,
        "usage_page_50": usage + "?p=50",
        "usage_status_agent": usage + "?status__exact=cancelled&agent__exact=rag",
        "usage_model": usage + "?model__exact=gpt-4o",
        "usage_date_drill": usage + f"?created_at__year={today.year}&created_at__month={today.month}",
        "usage_search_request_id": usage + "?q=bench-777",
        "users": "/admin/accounts/user/",
        "api_keys": "/admin/accounts/apikey/",
        "budgets": "/admin/billing/budget/",
    }


class QueryLog:
    """Every SQL statement a page runs, with its time (an execute wrapper: works with DEBUG off)."""

    def __init__(self):
        self.entries = []

    def __call__(self, execute, sql, params, many, context):
        started = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            self.entries.append(((time.perf_counter() - started) * 1000, sql))


def timed(client, url: str, repeat: int, show_sql: bool) -> dict:
    from django.db import connection

    response = client.get(url)
    assert response.status_code == 200, (url, response.status_code)
    log = QueryLog()
    with connection.execute_wrapper(log):
        client.get(url)
    if show_sql:
        for ms, sql in sorted(log.entries, reverse=True)[:3]:
            print(f"    {ms:7.1f} ms  {sql[:300]}")
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        client.get(url)
        samples.append((time.perf_counter() - started) * 1000)
    samples.sort()
    return {"median_ms": round(statistics.median(samples), 1),
            "p95_ms": round(samples[max(0, int(len(samples) * 0.95) - 1)], 1), "max_ms": round(samples[-1], 1),
            "queries": len(log.entries), "sql_ms": round(sum(ms for ms, _ in log.entries), 1)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--show-sql", action="store_true", help="print each page's three slowest statements")
    args = parser.parse_args()
    connection, old_name = setup_database()
    try:
        from django.test import Client

        from accounts.actions.organizations import create_organization
        from accounts.actions.users import create_user

        org = create_organization("Bench Corp")
        users = [create_user(f"bench{i}", organization=org, role="user", team=f"team{i % 4}") for i in range(20)]
        root = create_user("root", organization=org, role="admin")
        root.is_staff = root.is_superuser = True
        root.save(update_fields=["is_staff", "is_superuser"])
        audit_s = insert_audit_events(connection, org, users, args.rows)
        usage_s = insert_usage(org, users, args.rows)
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("ANALYZE")
        client = Client()
        client.force_login(root)
        results = {name: timed(client, url, args.repeat, args.show_sql) for name, url in pages(org, users).items()}
        for name, r in results.items():
            print(f"{name:26s} median {r['median_ms']:7.1f} ms  p95 {r['p95_ms']:7.1f} ms  {r['queries']:2d} queries ({r['sql_ms']:.1f} ms SQL)")
        worst = max(r["p95_ms"] for r in results.values())
        summary = {"benchmark": "admin_lists", "database": connection.vendor, "rows": args.rows,
                   "insert_s": {"audit": round(audit_s, 1), "usage": round(usage_s, 1)}, "repeat": args.repeat,
                   "results": results, "worst_p95_ms": worst, "target_ms": TARGET_MS, "meets_target": worst < TARGET_MS}
    finally:
        connection.creation.destroy_test_db(old_name, verbosity=0)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
