"""Benchmark: the cost stats aggregation over 10,000 usage records.

    python bench/cost_stats.py [--records 10000] [--repeat 30]      (DATABASE_URL honoured)

Runs in a throwaway database (Django's test database, created and dropped here), inserts the
records spread over 30 days, 20 users, 3 models and 4 agents, and times
billing.stats.organization_stats (totals, by model/agent/status, per day in the organization's
time zone) for each period, plus the forecast. The last line is one JSON object.
"""

import argparse
import json
import os
import random
import statistics
import sys
import time
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "relay.settings")


def setup_database():
    import django
    from django.conf import settings

    django.setup()
    database = settings.DATABASES["default"]
    if database["ENGINE"].endswith("sqlite3"):
        database["TEST"]["NAME"] = str(ROOT / "var" / "bench-cost-stats.sqlite3")
    else:
        database["TEST"]["NAME"] = f"bench_cost_stats_{os.getpid()}"
    from django.db import connection

    old_name = database["NAME"]
    connection.creation.create_test_db(verbosity=0, autoclobber=True, serialize=False)
    return connection, old_name


def populate(count: int):
    from django.utils import timezone

    from accounts.actions.organizations import create_organization
    from accounts.actions.users import create_user
    from billing.models import ModelPrice, UsageRecord

    org = create_organization("Bench Corp", time_zone="Europe/Berlin")
    users = [create_user(f"bench{i}", organization=org, role="user", team=f"team{i % 4}") for i in range(20)]
    prices = list(ModelPrice.objects.filter(model__in=["gpt-4o", "gpt-4o-mini", "local-mini"]))
    rng, now = random.Random(7), timezone.now()
    records = []
    for n in range(count):
        user, price = rng.choice(users), rng.choice(prices)
        records.append(UsageRecord(
            organization=org, team_id=user.team_id, user=user, agent=rng.choice(["math", "code", "rag", "vision"]),
            model=price.model, price=price, input_tokens=rng.randint(10, 2000), output_tokens=rng.randint(1, 800),
            cost=Decimal(rng.randint(1, 50_000_000)) / 10**9, status=rng.choice(["complete"] * 9 + ["cancelled"]),
            complete=True, latency_ms=rng.randint(50, 5000), request_id=f"bench-{n}",
            created_at=now - timedelta(seconds=rng.randint(0, 30 * 86400))))
    started = time.perf_counter()
    UsageRecord.objects.bulk_create(records, batch_size=1000)
    return org, time.perf_counter() - started


def timed(fn, repeat: int) -> dict:
    fn()  # warm: first query plans and connection setup are not what a dashboard sees
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - started) * 1000)
    samples.sort()
    return {"median_ms": round(statistics.median(samples), 2),
            "p95_ms": round(samples[max(0, int(len(samples) * 0.95) - 1)], 2), "max_ms": round(samples[-1], 2)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args()
    connection, old_name = setup_database()
    try:
        from billing import stats

        org, insert_s = populate(args.records)
        results = {period: timed(lambda p=period: stats.organization_stats(org, p), args.repeat)
                   for period in stats.PERIODS}
        results["forecast"] = timed(lambda: stats.forecast(org), args.repeat)
        check = stats.organization_stats(org, "30d")["totals"]["requests"]
        for name, figures in results.items():
            print(f"{name:9s} median {figures['median_ms']:8.2f} ms  p95 {figures['p95_ms']:8.2f} ms")
        worst = max(r["p95_ms"] for name, r in results.items() if name in stats.PERIODS)
        summary = {
            "benchmark": "cost_stats", "database": connection.vendor, "records": args.records,
            "records_in_30d": check, "insert_s": round(insert_s, 3), "repeat": args.repeat, "results": results,
            "stats_p95_ms": worst, "target_ms": 200, "meets_target": worst < 200,
        }
    finally:
        connection.creation.destroy_test_db(old_name, verbosity=0)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
