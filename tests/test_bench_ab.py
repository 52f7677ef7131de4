"""bench/ab.py's arithmetic and its module hiding (no load, no timing)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
try:
    import ab
finally:
    sys.path.pop(0)


def run(pair: int, side: str, speed: float, relay_work: float) -> dict:
    """One load.py row on a machine running at `speed` (1.0 = its usual): every process's CPU per request scales."""
    return {"pair": pair, "side": side, "rows": {"p2 c32": {
        "rps": round(400 / speed, 1), "p99_ms": 100.0, "relay_cpu": relay_work * speed, "generator_cpu": 0.1 * speed}}}


def test_the_normalized_cpu_sees_through_the_machine_swinging_between_runs():
    # B does 3% less work per request, but the machine slowed down whenever B ran in pairs 1 and 2.
    speeds = {(1, "A"): 1.0, (1, "B"): 1.3, (2, "B"): 1.25, (2, "A"): 0.95, (3, "A"): 1.1, (3, "B"): 0.9}
    runs = [run(pair, side, speed, 3.0 if side == "A" else 2.91) for (pair, side), speed in speeds.items()]
    row = ab.summarize(runs)["p2 c32"]
    assert row["B_relay_cpu_median"] > row["A_relay_cpu_median"]  # the raw figure says B costs more...
    assert row["normalized_cpu_change_pct"] == -3.0  # ...normalized, its 3% saving shows
    assert row["b_lower_in"] == "3/3"
    assert row["A_normalized_cpu_mean"] == pytest.approx(30.0)


def test_rows_are_read_from_load_py_result():
    plain = {"rps": 412.5, "p99_ms": 130.0, "cpu_ms_per_request": {"relay": 3.3, "load generator": 0.1}}
    result = {"phases": {"p2": {"c32": {"figures": {"relay_plain": plain, "direct_plain": {}}},
                                "c64": {"figures": {"relay_plain": {**plain, "rps": 450.0}}}}}}
    assert ab.rows_of(result) == {
        "p2 c32": {"rps": 412.5, "p99_ms": 130.0, "relay_cpu": 3.3, "generator_cpu": 0.1},
        "p2 c64": {"rps": 450.0, "p99_ms": 130.0, "relay_cpu": 3.3, "generator_cpu": 0.1}}


def test_a_hidden_module_cannot_be_imported_by_that_side():
    env = ab.side_env(["RELAY_AB_SIDE=A"], ["json"])
    probe = "import os; print(os.environ['RELAY_AB_SIDE']); import json"
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True)
    assert done.stdout.strip() == "A"
    assert "ImportError: json hidden by bench/ab.py" in done.stderr
    shown = subprocess.run([sys.executable, "-c", "import json"], env=ab.side_env([], []))
    assert shown.returncode == 0
