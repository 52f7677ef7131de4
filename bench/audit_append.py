"""Audit appends per second: one writer, then 8 writer processes at once; then verify the chain.

    python bench/audit_append.py [--seconds 5] [--writers 8]

Uses DATABASE_URL when set (PostgreSQL: give it a scratch database, the events stay: the table
is append-only), else a temporary SQLite file. The last line is a JSON object with the figures.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def environment(database_url: str) -> dict:
    env = {**os.environ, "DATABASE_URL": database_url, "DEBUG": "0", "RELAY_BEHIND_TLS": "0"}
    env.setdefault("SECRET_KEY", "bench-" + "k" * 60)
    return env


def manage(env: dict, *args: str) -> str:
    done = subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          check=False)
    if done.returncode != 0:
        sys.exit(f"manage.py {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return done.stdout


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU of a local process (a PostgreSQL backend), None if it is not readable here."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def worker(seconds: float) -> None:
    """One writer process: say it is up, wait for the common start, append as fast as possible."""
    import django

    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "relay.settings")
    django.setup()
    from django.db import connection

    from audit.services import record

    record("bench.warmup", resource=f"writer:{os.getpid()}")  # the connection is open before the clock
    backend = None
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            backend = cursor.fetchone()[0]
    print("ready", flush=True)
    sys.stdin.readline()
    resource_name = f"writer:{os.getpid()}"
    count, own, db = 0, time.process_time(), backend and _cpu_seconds(backend)
    start = time.monotonic()  # system-wide: comparable between the writers
    deadline = start + seconds
    while time.monotonic() < deadline:
        record("bench.append", resource=resource_name, metadata={"n": count, "note": "bench"})
        count += 1
    # The last record() returned after its commit and its drain (or another writer's drain, which
    # ends only when the queue is empty): `end` includes chaining what this writer queued.
    end, own = time.monotonic(), time.process_time() - own
    db = _cpu_seconds(backend) - db if db is not None else None
    print(json.dumps({"appended": count, "start": start, "end": end, "cpu_s": own, "db_cpu_s": db}), flush=True)


def run_writers(env: dict, writers: int, seconds: float) -> dict:
    """Start `writers` processes, wait until every one has set Django up, then start them together.

    The rate is the appends over the time from the first writer's start to the last one's end
    (its final drain included), not over `seconds`: a backlog left in the queue is not counted
    as done. CPU per append: the writers' own (Python) and their PostgreSQL backends' (read from
    /proc when the server is local; its background writers are not included).
    """
    command = [sys.executable, __file__, "--worker", str(seconds)]
    procs = [subprocess.Popen(command, cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(writers)]
    for proc in procs:
        if proc.stdout.readline().strip() != "ready":
            sys.exit(f"writer failed:\n{proc.stderr.read()[-3000:]}")
    for proc in procs:
        proc.stdin.write("go\n")
        proc.stdin.flush()
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=seconds + 120)
        if proc.returncode != 0:
            sys.exit(f"writer failed:\n{err[-3000:]}")
        results.append(json.loads(out.strip().splitlines()[-1]))
    appended = sum(r["appended"] for r in results)
    elapsed = max(r["end"] for r in results) - min(r["start"] for r in results)
    db = [r["db_cpu_s"] for r in results]
    return {"appended": appended, "per_s": appended / elapsed, "elapsed_s": round(elapsed, 3),
            "writer_cpu_ms": round(1000 * sum(r["cpu_s"] for r in results) / appended, 3),
            "db_cpu_ms": round(1000 * sum(db) / appended, 3) if None not in db else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--writers", type=int, default=8)
    parser.add_argument("--worker", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker)
        return
    scratch = None
    database_url = os.environ.get("DATABASE_URL", "")
    if not database_url:
        scratch = tempfile.TemporaryDirectory(prefix="relay-bench-")
        database_url = f"sqlite:///{scratch.name}/bench.sqlite3"
    env = environment(database_url)
    manage(env, "migrate", "--noinput", "-v0")
    runs = {}
    for writers in (1, args.writers):
        runs[writers] = run = run_writers(env, writers, args.seconds)
        print(f"{writers} writer(s): {run['per_s']:,.0f} appends/s; CPU per append: writers "
              f"{run['writer_cpu_ms']} ms, PostgreSQL backends {run['db_cpu_ms']} ms")
    verified = manage(env, "verify_audit").strip()
    print(verified)
    # Every append counted is on the verified chain (plus one warm-up event per writer), no more.
    expected = sum(run["appended"] for run in runs.values()) + sum(runs)  # one warm-up per writer
    chained = int(verified.split()[0]) if verified.split()[0].isdigit() else -1
    if chained != expected:
        sys.exit(f"{chained} events on the chain, {expected} appended: the figures do not count what was chained")
    print(json.dumps({
        "database": database_url.split(":", 1)[0], "seconds": args.seconds,
        "single_writer_appends_per_s": round(runs[1]["per_s"], 1), "writers": args.writers,
        "concurrent_appends_per_s": round(runs[args.writers]["per_s"], 1), "chain": verified.split(";")[0],
        "runs": {str(w): run for w, run in runs.items()},
    }))
    if scratch:
        scratch.cleanup()


if __name__ == "__main__":
    main()
