"""Several worker processes per instance share one PROMETHEUS_MULTIPROC_DIR; /metrics sums them."""

import os
import subprocess
import sys

import httpx
import pytest

from relay.observability import multiproc
from tests.observability.conftest import METRICS_TOKEN, value
from tests.uvicorn_worker import start_workers


@pytest.fixture
def two_workers(tmp_path):
    metrics_dir = tmp_path / "instance-a"
    multiproc.prepare_directory(metrics_dir)
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir), "RELAY_METRICS_TOKEN": METRICS_TOKEN,
           "DJANGO_SETTINGS_MODULE": "relay.settings", "ALLOWED_HOSTS": "127.0.0.1"}
    env.pop("PYTEST_XDIST_WORKER", None)
    # Any answer from /readyz (its status depends on services this test does not need); not
    # /healthz, whose requests the test counts.
    workers = start_workers([env, env], ready_path="/readyz", any_answer=True)
    try:
        yield workers, metrics_dir
    finally:
        for worker in workers:
            worker.stop()


def test_a_counter_incremented_in_two_workers_is_summed(two_workers):
    (first, second), metrics_dir = two_workers
    for _ in range(3):
        assert httpx.get(f"{first.url}/healthz").status_code == 200
    for _ in range(4):
        assert httpx.get(f"{second.url}/healthz").status_code == 200
    pids = {first.process.pid, second.process.pid}
    written = {int(f.stem.rsplit("_", 1)[1]) for f in metrics_dir.glob("counter_*.db")}
    assert pids <= written, (pids, written)

    for worker in (first, second):  # either worker answers for the whole instance
        response = httpx.get(f"{worker.url}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
        assert response.status_code == 200, response.text[:2000]
        text = response.text
        assert value(text, "http_requests_total", method="GET", endpoint="/healthz", status="200") == 7
        assert value(text, "django_http_responses_total_by_status_total", status="200") >= 7
        assert value(text, "active_sessions") == 0


def test_preparing_an_instance_directory_leaves_other_instances_alone(tmp_path):
    mine, theirs = tmp_path / "relay-1", tmp_path / "relay-2"
    for directory in (mine, theirs):
        directory.mkdir()
        (directory / "counter_123.db").write_bytes(b"x")
    (mine / "notes.txt").write_text("not a metrics file")
    from django.core.management import call_command

    call_command("prepare_metrics_dir", str(mine))
    assert not (mine / "counter_123.db").exists()
    assert (mine / "notes.txt").exists() and (theirs / "counter_123.db").exists()
    multiproc.prepare_directory(tmp_path / "new" / "dir")
    assert (tmp_path / "new" / "dir").is_dir()


def test_live_gauges_of_dead_workers_are_dropped(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    (tmp_path / f"gauge_livesum_{dead_pid}.db").write_bytes(b"")
    (tmp_path / f"gauge_livesum_{os.getpid()}.db").write_bytes(b"")
    multiproc.reap_dead_workers(str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"gauge_livesum_{os.getpid()}.db"]
