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


def worker(seconds: float) -> None:
    """One writer process: say it is up, wait for the common start, append as fast as possible."""
    import django

    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "relay.settings")
    django.setup()
    from audit.services import record

    record("bench.warmup", resource=f"writer:{os.getpid()}")  # the connection is open before the clock
    print("ready", flush=True)
    sys.stdin.readline()
    count, deadline = 0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        record("bench.append", resource=f"writer:{os.getpid()}", metadata={"n": count, "note": "bench"})
        count += 1
    print(json.dumps({"appended": count}), flush=True)


def run_writers(env: dict, writers: int, seconds: float) -> float:
    """Start `writers` processes, wait until every one has set Django up, then start them together."""
    command = [sys.executable, __file__, "--worker", str(seconds)]
    procs = [subprocess.Popen(command, cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(writers)]
    for proc in procs:
        if proc.stdout.readline().strip() != "ready":
            sys.exit(f"writer failed:\n{proc.stderr.read()[-3000:]}")
    for proc in procs:
        proc.stdin.write("go\n")
        proc.stdin.flush()
    total = 0
    for proc in procs:
        out, err = proc.communicate(timeout=seconds + 120)
        if proc.returncode != 0:
            sys.exit(f"writer failed:\n{err[-3000:]}")
        total += json.loads(out.strip().splitlines()[-1])["appended"]
    return total / seconds


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
    single = run_writers(env, 1, args.seconds)
    print(f"1 writer: {single:,.0f} appends/s")
    concurrent = run_writers(env, args.writers, args.seconds)
    print(f"{args.writers} writers: {concurrent:,.0f} appends/s")
    verified = manage(env, "verify_audit").strip()
    print(verified)
    print(json.dumps({
        "database": database_url.split(":", 1)[0], "seconds": args.seconds,
        "single_writer_appends_per_s": round(single, 1), "writers": args.writers,
        "concurrent_appends_per_s": round(concurrent, 1), "chain": verified.split(";")[0],
    }))
    if scratch:
        scratch.cleanup()


if __name__ == "__main__":
    main()
