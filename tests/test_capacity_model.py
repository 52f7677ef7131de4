"""The capacity model of bench/capacity.py: what each term does to a prediction (no load, no timing)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
try:
    import _capacity_model as model
    from _cpu import postgres_of
finally:
    sys.path.pop(0)

TERMS = {"relay": 4.0, "postgresql": 0.6, "redis": 0.2, "load generator": 0.1, "upstream": 0.0, "interrupts": 0.1,
         "nginx": 1.0}  # 6 ms per request in all


def test_a_saturated_machine_serves_its_free_core_ms_over_the_cpu_of_one_request():
    idle = model.predict_cluster(TERMS, instances=2, cores=2, background_ms_per_s=0, fixed_ms_per_s=0)
    assert idle["rps"] == pytest.approx(2000 / 6, abs=0.1) and idle["bound"] == "cpu"
    # Other programs' CPU and Celery's ticks are taken off what the machine has.
    shared = model.predict_cluster(TERMS, instances=2, cores=2, background_ms_per_s=600, fixed_ms_per_s=200)
    assert shared["rps"] == pytest.approx(1200 / 6, abs=0.1)


def test_nginx_in_front_costs_its_own_cpu_and_the_interrupts_of_its_hop():
    direct = {"cpu_ms_per_request": {"relay": 4.0, "interrupts": 0.1, "nginx": 0.0}}
    same_connections = {"cpu_ms_per_request": {"relay": 3.5, "interrupts": 0.2}}
    via_nginx = {"cpu_ms_per_request": {"relay": 3.6, "interrupts": 0.5, "nginx": 0.3}}
    terms = model.per_request_terms(direct, via_nginx, same_connections)
    assert terms["relay"] == 4.0 and terms["interrupts"] == 0.1  # Relay's own terms: straight at it
    assert terms["nginx"] == pytest.approx(0.3 + 0.3)


def test_one_relay_process_uses_at_most_one_core():
    many_cores = model.predict_cluster(TERMS, instances=2, cores=64, background_ms_per_s=0, fixed_ms_per_s=0)
    assert many_cores["rps"] == pytest.approx(2 * 1000 / 4.0) and many_cores["bound"] == "relay processes"


def test_cores_for_a_load_are_its_rate_times_the_cpu_of_one_unit():
    assert model.cores_for_requests(TERMS, 1000)["relay + postgresql + redis"] == pytest.approx(4.8)
    streams = {"relay": {"start": 4.0, "chunk": 0.05, "held": 0.2}}
    # 1,000 streams of 20 s at 5 tokens/s (held at 1/s): 1000 x (0.2 + 4 x 0.05) + 50 starts/s x 4 ms.
    cores = model.cores_for_streams(streams, streams=1000, tokens_per_s=5, seconds=20, held_tokens_per_s=1)
    assert cores["relay"] == pytest.approx((1000 * 0.4 + 50 * 4.0) / 1000)


def test_postgresql_counts_one_databases_backends_and_the_shared_writers_only():
    ours = postgres_of("relay_bench_1")
    assert ours("postgres: 15/main: postgres relay_bench_1 127.0.0.1(5000) idle ")
    assert ours("postgres: 15/main: walwriter ") and ours("/usr/lib/postgresql/15/bin/postgres -D /var/lib")
    assert not ours("postgres: 15/main: postgres relay_bench_12 127.0.0.1(5001) idle ")
    assert not ours("postgres: 15/main: postgres relay_other 127.0.0.1(5002) COMMIT ")
