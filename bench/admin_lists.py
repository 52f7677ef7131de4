"""Benchmark: Django admin list pages over 100,000 audit events and 100,000 usage records.

    python bench/admin_lists.py [--rows 100000] [--orgs 12] [--repeat 15]      (DATABASE_URL honoured)

Runs in a throwaway database (Django's test database, created and dropped here). The rows are
spread over --orgs organizations, each with its teams, members, API keys and conversations.
Audit events are append-only (their bulk_create is refused, triggers guard UPDATE/DELETE), so
they go in by plain SQL INSERT, which the triggers allow; their hashes are dummies (this
database is thrown away, nothing verifies its chain). Everything else goes in by bulk_create.
Then two browsers (Django's test client, sessions and middleware included) open each
changelist, plain, filtered, searched and drilled by date: a superuser's, and one
organization's admin's (role `admin`, scoped by the gate). Target: every page p95 < 300 ms.
Last line: one JSON object.
"""

import argparse
import json
import os
import random
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "relay.settings")
os.environ.setdefault("RELAY_BEHIND_TLS", "0")
TARGET_MS = 300
ACTIONS = ["auth.login", "agent.run", "api_key.created", "api_key.revoked", "budget.set", "document.uploaded"]
AGENTS = ["math", "code", "rag", "vision"]


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


def create_members(orgs, per_org: int) -> dict:
    """Each organization's members: two through the accounts actions (roles, audit), the rest in bulk."""
    from django.contrib.auth.hashers import make_password
    from django.contrib.auth.models import Group

    from accounts.actions.teams import create_team
    from accounts.actions.users import create_user
    from accounts.models import User

    roles = {group.name: group for group in Group.objects.filter(name__in=["user", "viewer", "api_user"])}
    members, rng = {}, random.Random(5)
    for index, org in enumerate(orgs):
        teams = [create_team(org, f"team{t}") for t in range(4)]
        made = [create_user(f"o{index}u{i}", organization=org, role="user", team=teams[i]) for i in range(2)]
        bulk = [User(username=f"o{index}m{i}", organization=org, team=teams[i % 4], email=f"o{index}m{i}@bench.test",
                     password=make_password(None), is_active=rng.random() > 0.05) for i in range(per_org - 2)]
        made += User.objects.bulk_create(bulk, batch_size=2000)
        members[org.pk] = made
    through = User.groups.through
    through.objects.bulk_create([through(user_id=user.pk, group_id=roles[rng.choice(list(roles))].pk)
                                 for made in members.values() for user in made[2:]], batch_size=5000)
    return members


def create_keys(members, per_org: int) -> int:
    from django.utils import timezone

    from accounts.models import APIKey

    rng, now, keys = random.Random(3), timezone.now(), []
    for made in members.values():
        for n in range(per_org):
            keys.append(APIKey(name=f"key {n}", owner=rng.choice(made), prefix=uuid.uuid4().hex[:16],
                               secret_hash="0" * 64, hash_version="bench",
                               revoked_at=now - timedelta(days=rng.randint(0, 90)) if rng.random() < 0.2 else None))
    APIKey.objects.bulk_create(keys, batch_size=5000)
    return len(keys)


def create_conversations(members, count: int) -> None:
    from agents.models import Conversation

    rng, batch = random.Random(9), []
    people = [user for made in members.values() for user in made]
    for n in range(count):
        user = rng.choice(people)
        batch.append(Conversation(organization_id=user.organization_id, user=user, title=f"Question {n}",
                                  agent=rng.choice(AGENTS)))
        if len(batch) == 5000:
            Conversation.objects.bulk_create(batch)
            batch = []
    Conversation.objects.bulk_create(batch)
    # auto_now stamps every row now: spread them over 90 days (plain SQL, like the app's own updates).
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("UPDATE agents_conversation SET updated_at = created_at - (random() * 90) * interval '1 day'"
                       if connection.vendor == "postgresql" else
                       "UPDATE agents_conversation SET updated_at = datetime(created_at, '-' || abs(random() % 90) || ' days')")


def insert_audit_events(connection, members, count: int) -> float:
    rng, now = random.Random(11), time.time()
    columns = ["sequence", "time", "actor_id", "actor_ref", "actor_name", "api_key_prefix", "organization_id",
               "organization_ref", "action", "resource", "status", "ip", "user_agent", "request_id", "metadata",
               "prev_hash", "hash"]
    from django.db.models import Max

    from audit.models import AuditEvent

    people = [user for made in members.values() for user in made]
    start = (AuditEvent.objects.aggregate(m=Max("sequence"))["m"] or 0) + 1
    placeholders = ", ".join(["%s"] * len(columns))
    sql = f"INSERT INTO audit_auditevent ({', '.join(columns)}) VALUES ({placeholders})"  # noqa: S608 (constants)
    started = time.perf_counter()
    with connection.cursor() as cursor:
        batch = []
        for n in range(count):
            user = rng.choice(people)
            batch.append((start + n, datetime.fromtimestamp(now - (count - n) * 20, UTC), user.pk, user.pk,
                          user.username, "", user.organization_id, user.organization_id, rng.choice(ACTIONS),
                          f"message:{uuid.uuid4()}", rng.choice(["success"] * 18 + ["denied", "error"]), "10.0.0.1",
                          "bench", uuid.uuid4().hex[:32], "{}", "0" * 64, f"{n:064x}"))
            if len(batch) == 5000:
                cursor.executemany(sql, batch)
                batch = []
        if batch:
            cursor.executemany(sql, batch)
    return time.perf_counter() - started


def insert_usage(members, count: int) -> float:
    from django.utils import timezone

    from billing.models import ModelPrice, UsageRecord

    prices = list(ModelPrice.objects.filter(model__in=["gpt-4o", "gpt-4o-mini", "local-mini"]))
    people = [user for made in members.values() for user in made]
    rng, now = random.Random(7), timezone.now()
    started = time.perf_counter()
    batch = []
    for n in range(count):
        user, price = rng.choice(people), rng.choice(prices)
        batch.append(UsageRecord(
            organization_id=user.organization_id, team_id=user.team_id, user=user, agent=rng.choice(AGENTS),
            model=price.model, price=price, input_tokens=rng.randint(10, 2000), output_tokens=rng.randint(1, 800),
            cost=Decimal(rng.randint(1, 50_000_000)) / 10**9, status=rng.choice(["complete"] * 9 + ["cancelled"]),
            complete=True, latency_ms=rng.randint(50, 5000), request_id=f"bench-{n}",
            created_at=now - timedelta(seconds=rng.randint(0, 60 * 86400))))
        if len(batch) == 5000:
            UsageRecord.objects.bulk_create(batch)
            batch = []
    UsageRecord.objects.bulk_create(batch)
    return time.perf_counter() - started


def create_budgets(orgs, members) -> None:
    from billing.models import Budget

    Budget.objects.bulk_create([Budget(organization=org, scope=scope, period="monthly", limit_usd=Decimal(100),
                                       **({"user": members[org.pk][2]} if scope == "user" else {}))
                                for org in orgs for scope in ("organization", "user")])


def pages(org, member, platform: bool) -> dict:
    """The pages either browser opens; org names the organization the filters and searches aim at."""
    from django.utils import timezone

    from billing.models import UsageRecord

    today = timezone.now()
    audit, usage = "/admin/audit/auditevent/", "/admin/billing/usagerecord/"
    users, keys, chats = "/admin/accounts/user/", "/admin/accounts/apikey/", "/admin/agents/conversation/"
    request_id = UsageRecord.objects.filter(organization=org).order_by("id").values_list("request_id", flat=True)[77]
    by_org = f"&organization__id__exact={org.pk}" if platform else ""
    found = {
        "audit": audit,
        "audit_page_50": audit + "?p=50",
        "audit_status_denied": audit + "?status__exact=denied",
        "audit_action_org": audit + "?action__exact=budget.set" + by_org,
        "audit_search_actor": audit + f"?q={member.username}",
        "audit_search_request_id": audit + "?q=0123456789abcdef",
        "audit_date_drill": audit + f"?time__year={today.year}&time__month={today.month}",
        "usage": usage,
        "usage_page_50": usage + "?p=50",
        "usage_status_agent": usage + "?status__exact=cancelled&agent__exact=rag",
        "usage_model": usage + "?model__exact=gpt-4o",
        "usage_date_drill": usage + f"?created_at__year={today.year}&created_at__month={today.month}",
        "usage_search_request_id": usage + f"?q={request_id}",
        "users": users,
        "users_page_2": users + "?p=2",
        "users_active_role": users + "?is_active__exact=1&groups__id__exact=" + str(member.groups.first().pk),
        "users_search": users + f"?q={member.username}",
        "api_keys": keys,
        "api_keys_page_2": keys + "?p=2",
        "api_keys_revoked": keys + "?revoked_at__isnull=False",
        "api_keys_search": keys + f"?q={member.username}",
        "conversations": chats,
        "conversations_page_2": chats + "?p=2",
        "conversations_agent": chats + "?agent__exact=rag",
        "conversations_search": chats + f"?q={member.username}",
        "conversations_date_drill": chats + f"?updated_at__year={today.year}&updated_at__month={today.month}",
        "budgets": "/admin/billing/budget/",
    }
    if platform:
        found["users_org"] = users + f"?organization__id__exact={org.pk}"
        found["conversations_org"] = chats + f"?organization__id__exact={org.pk}"
    return found


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
    samples, cpu = [], []
    for _ in range(repeat):
        started, cpu_started = time.perf_counter(), time.process_time()
        client.get(url)
        samples.append((time.perf_counter() - started) * 1000)
        cpu.append((time.process_time() - cpu_started) * 1000)
    samples.sort()
    # This process's CPU (Python: views, templates) apart from the wall time: on a shared machine
    # the wall time also counts waiting for a core, which the CPU time does not.
    return {"median_ms": round(statistics.median(samples), 1), "cpu_median_ms": round(statistics.median(cpu), 1),
            "p95_ms": round(samples[max(0, int(len(samples) * 0.95) - 1)], 1), "max_ms": round(samples[-1], 1),
            "queries": len(log.entries), "sql_ms": round(sum(ms for ms, _ in log.entries), 1)}


def measure(who: str, user, urls: dict, repeat: int, show_sql: bool) -> dict:
    from django.test import Client

    client = Client()
    client.force_login(user)
    results = {}
    for name, url in urls.items():
        if show_sql:
            print(f"  {who} {name}")
        results[name] = timed(client, url, repeat, show_sql)
    print(f"-- {who}")
    for name, r in results.items():
        print(f"{name:26s} median {r['median_ms']:7.1f} ms  p95 {r['p95_ms']:7.1f} ms  "
              f"cpu {r['cpu_median_ms']:6.1f} ms  {r['queries']:2d} queries ({r['sql_ms']:.1f} ms SQL)")
    return results


def seed(connection, args):
    from accounts.actions.organizations import create_organization
    from accounts.actions.users import create_user

    orgs = [create_organization(f"Bench Corp {i}") for i in range(args.orgs)]
    members = create_members(orgs, args.users_per_org)
    keys = create_keys(members, args.keys_per_org)
    create_conversations(members, args.conversations)
    create_budgets(orgs, members)
    root = create_user("root", organization=orgs[0], role="admin")
    root.is_staff = root.is_superuser = True
    root.save(update_fields=["is_staff", "is_superuser"])
    org_admin = create_user("orgadmin", organization=orgs[0], role="admin")
    audit_s = insert_audit_events(connection, members, args.rows)
    usage_s = insert_usage(members, args.rows)
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE")
    counts = {"organizations": len(orgs), "users": sum(map(len, members.values())), "api_keys": keys,
              "conversations": args.conversations, "audit_events": args.rows, "usage_records": args.rows}
    return orgs[0], members[orgs[0].pk][3], root, org_admin, counts, {"audit": round(audit_s, 1),
                                                                      "usage": round(usage_s, 1)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000, help="audit events, and usage records")
    parser.add_argument("--orgs", type=int, default=12)
    parser.add_argument("--users-per-org", type=int, default=200)
    parser.add_argument("--keys-per-org", type=int, default=400)
    parser.add_argument("--conversations", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--show-sql", action="store_true", help="print each page's three slowest statements")
    args = parser.parse_args()
    connection, old_name = setup_database()
    try:
        org, member, root, org_admin, counts, insert_s = seed(connection, args)
        results = {"superuser": measure("superuser", root, pages(org, member, True), args.repeat, args.show_sql),
                   "org_admin": measure(f"org admin of {org.name}", org_admin, pages(org, member, False),
                                        args.repeat, args.show_sql)}
        worst = {who: max(r["p95_ms"] for r in found.values()) for who, found in results.items()}
        summary = {"benchmark": "admin_lists", "database": connection.vendor, "rows": counts,
                   "insert_s": insert_s, "repeat": args.repeat, "results": results, "worst_p95_ms": worst,
                   "target_ms": TARGET_MS, "meets_target": max(worst.values()) < TARGET_MS}
    finally:
        connection.creation.destroy_test_db(old_name, verbosity=0)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
