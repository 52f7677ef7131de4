"""The opening's rows on PostgreSQL: what one batch of openings costs Relay's process and PostgreSQL.

    python bench/opening_rows.py [--repeat 300] [--batches 1,2,4,8]

Every model call commits its opening rows (the conversation, the question, the running answer:
agents.actions.run_rows) before the model is asked, through the group commit's writer
(agents.actions.runs._open_many). This times that writer's call alone, on a scratch database on
DATABASE_URL's server, for batches of each size: per opening, the wall time of the call, this
process's CPU and the PostgreSQL backend's. The last line is a JSON object with the figures.
(Until 2026-12-07 the rows travelled as VALUES or arrays by billing.pg_rows.SCALAR_ROWS, which
`--scalar-rows` set; they now travel as JSON to one function whatever the batch, bench/README.md.)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

from _cpu import cpu_seconds  # noqa: I001  (bench-local helpers)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def measure(user, size: int, repeat: int, backend: int) -> dict:
    from agents.actions import runs
    from agents.runner import new_request
    from relay.eventloop.group_commit import Write

    def batch():
        return [Write(runs.Opening(new_request(user, None, {"agent_type": "general", "query": "benchmark"}),
                                   str(uuid.uuid4()), str(uuid.uuid4()), "general", "bench-plain"))
                for _ in range(size)]

    for _ in range(20):  # the statement's shape built and the connection warm
        runs._open_many(batch())
    walls, cpu, pg = [], 0.0, cpu_seconds(backend)
    for _ in range(repeat):
        writes = batch()
        started, cpu_started = time.perf_counter(), time.process_time()
        results = runs._open_many(writes)
        walls.append(time.perf_counter() - started)
        cpu += time.process_time() - cpu_started
        assert results == [None] * size, results
    pg = cpu_seconds(backend) - pg
    openings = repeat * size
    return {"batch": size, "wall_ms_per_opening": round(statistics.median(walls) * 1000 / size, 3),
            "relay_cpu_ms_per_opening": round(cpu * 1000 / openings, 3),
            "postgres_cpu_ms_per_opening": round(pg * 1000 / openings, 3)}


def run(args) -> dict:
    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "relay.settings")
    django.setup()
    from django.db import connection

    from accounts.actions.organizations import create_organization
    from accounts.actions.users import create_user

    user = create_user("bench", organization=create_organization("Bench"), role="user", email="bench@example.com")
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        backend = cursor.fetchone()[0]
    return {"openings": [measure(user, size, args.repeat, backend) for size in args.batches]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=300)
    parser.add_argument("--batches", type=lambda text: [int(n) for n in text.split(",")], default=[1, 2, 4, 8])
    args = parser.parse_args()
    base = os.environ.get("DATABASE_URL", "")
    if not base.startswith("postgres"):
        sys.exit("opening_rows.py measures PostgreSQL: set DATABASE_URL to a PostgreSQL server")
    name = f"relay_bench_open_{os.getpid()}"
    server = base.rsplit("/", 1)[0]
    subprocess.run(["createdb", "-h", "127.0.0.1", "-U", "postgres", name], check=True)
    try:
        os.environ.update({"DATABASE_URL": f"{server}/{name}", "DEBUG": "0", "RELAY_BEHIND_TLS": "0"})
        os.environ.setdefault("SECRET_KEY", "bench-" + "k" * 60)
        subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, check=True)
        out = run(args)
    finally:
        from django.db import connections

        connections.close_all()
        subprocess.run(["dropdb", "-h", "127.0.0.1", "-U", "postgres", name], check=False)
    for shape, rows in out.items():
        for row in rows:
            print(f"{shape:14} batch {row['batch']:2}: {row['wall_ms_per_opening']:6.3f} ms per opening, Relay CPU "
                  f"{row['relay_cpu_ms_per_opening']:.3f} ms, PostgreSQL CPU {row['postgres_cpu_ms_per_opening']:.3f} ms")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
