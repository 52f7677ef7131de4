"""The benchmarks' start: one that fails part-way leaves nothing running or created behind it (no Relay,
no database, no upstream), where a stray process would share the machine with later measurements."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
try:
    import _relay
    import load
finally:
    sys.path.pop(0)


def fail(*_args, **_kwargs):
    raise subprocess.CalledProcessError(1, "manage.py migrate")


def test_a_relay_that_fails_to_migrate_drops_its_database(monkeypatch):
    commands = []
    monkeypatch.setenv("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/anything")
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.setattr(_relay.subprocess, "run", lambda args, **_: commands.append(args[0]))
    monkeypatch.setattr(_relay.RelayInstance, "run_manage", fail)

    with pytest.raises(subprocess.CalledProcessError):
        _relay.RelayInstance({})
    assert commands == ["createdb", "dropdb"]


class Process:
    terminated = False

    def terminate(self):
        self.terminated = True


def test_a_bench_whose_relay_fails_to_start_stops_its_upstreams(monkeypatch):
    stopped, paced = [], Process()
    monkeypatch.setattr(load, "start_upstream", lambda *_: (None, dict.fromkeys(load.MODELS, "http://127.0.0.1:9/v1"),
                                                              lambda: stopped.append("upstream")))
    monkeypatch.setattr(load.subprocess, "Popen", lambda *_args, **_kwargs: paced)
    monkeypatch.setattr(load, "wait_http", lambda _url: None)
    monkeypatch.setattr(load, "RelayInstance", fail)

    with pytest.raises(subprocess.CalledProcessError):
        load.Bench(argparse.Namespace(upstream="static", tokens=20))
    assert stopped == ["upstream"] and paced.terminated


def test_a_floor_that_answers_only_errors_is_stopped_at_its_deadline(monkeypatch):
    # It used to be probed forever: the deadline was checked only when the probe could not connect.
    floor, clock = Process(), iter(range(0, 10_000, 5))
    floor.killed = False
    floor.poll = lambda: None
    floor.kill = lambda: setattr(floor, "killed", True)
    monkeypatch.setattr(load.subprocess, "Popen", lambda *_args, **_kwargs: floor)
    monkeypatch.setattr(load.httpx, "post", lambda *_args, **_kwargs: SimpleNamespace(status_code=500))
    monkeypatch.setattr(load.time, "monotonic", lambda: next(clock))  # five seconds a probe
    monkeypatch.setattr(load.time, "sleep", lambda _seconds: None)

    with pytest.raises(RuntimeError, match="did not start"):
        load.start_floor("guarded", dict.fromkeys(load.MODELS, "http://127.0.0.1:9/v1"), {})
    assert floor.killed
