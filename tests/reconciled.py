"""`assert_reconciled()`: end a concurrency, fault or load test by proving the money books agree.

In-process (`assert_reconciled`) it runs agents.reconcile's checks on the test's database and
this process's ledger (the one live test servers in this process and uvicorn workers sharing the
Redis prefix use); `assert_reconciled_in(env)` runs `manage.py reconcile --json` against another
database and Redis prefix (the cluster tests' scratch databases). Either fails listing every
discrepancy with its ids.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def assert_reconciled(**options):
    """agents.reconcile.check(**options) must find nothing; returns its report."""
    from agents.reconcile import check

    report = check(**options)
    assert report.ok, "reconcile found:\n" + "\n".join(found.message for found in report.discrepancies)
    return report


def assert_reconciled_in(env: dict, *args: str) -> dict:
    """`manage.py reconcile --json *args` in env must exit 0 with a clean report; returns the report."""
    done = subprocess.run([sys.executable, "manage.py", "reconcile", "--json", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=180)
    lines = done.stdout.strip().splitlines()
    report = json.loads(lines[-1]) if lines and lines[-1].startswith("{") else None
    found = "\n".join(d["message"] for d in report["discrepancies"]) if report else done.stderr[-3000:]
    assert done.returncode == 0 and report is not None and report["ok"], f"reconcile found:\n{found}"
    return report
