"""Processes for the cluster tests: Relay instances, a private Redis and PostgreSQL, the cluster script.

Nothing here touches the machine's shared PostgreSQL or Redis servers beyond creating (and
dropping) a database of its own and using a key prefix of its own: fault tests stop and start
private servers, since other test workers use the shared ones at the same time.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import pytest
from django.conf import settings

from tests.support.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
MODEL = "fake-large"

SETUP = """
import json
from decimal import Decimal
from accounts.actions.keys import create_api_key
from accounts.actions.organizations import create_organization
from accounts.actions.users import create_user
from agents.actions.endpoints import create_endpoint
from billing.models import Budget, ModelPrice
org = create_organization("Cluster")
user = create_user("cluster", organization=org, role="user", email="cluster@example.com")
create_endpoint({model!r}, deployments=[{{"name": "primary", "base_url": {upstream!r}, "upstream_model": {model!r}}}])
ModelPrice.objects.create(model={model!r}, input_per_1k=Decimal("0.001"), output_per_1k=Decimal("0.002"))
issued = create_api_key(user, "cluster")
Budget.objects.create(organization=org, scope="api_key", api_key=issued.key, period="monthly",
                      limit_usd=Decimal("1000"), hard=True, alert_thresholds=[])
print(json.dumps({{"key": issued.secret}}))
"""


def require_cluster_services() -> None:
    from tests.conftest import require

    require(settings.DATABASES["default"]["ENGINE"].endswith("postgresql"), "cluster tests need PostgreSQL")
    require(bool(settings.REDIS_URL), "cluster tests need Redis")
    require(shutil.which("nginx") is not None or Path("/usr/sbin/nginx").exists(), "nginx is not installed")


def server_url(dbname: str, host: str = "127.0.0.1", port: int | None = None) -> str:
    default = settings.DATABASES["default"]
    port = port or default.get("PORT") or 5432
    user = default.get("USER") or "postgres"
    return f"postgres://{user}@{host}:{port}/{dbname}"


@contextlib.contextmanager
def scratch_database():
    """A new database on the shared PostgreSQL server, dropped afterwards."""
    import psycopg

    name = f"relay_cluster_{uuid.uuid4().hex[:10]}"
    admin = server_url("postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield server_url(name)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def relay_env(database_url: str, redis_url: str, **extra) -> dict:
    env = {key: value for key, value in os.environ.items() if not key.startswith("PYTEST_")}
    env.update({
        "DATABASE_URL": database_url, "REDIS_URL": redis_url, "SECRET_KEY": "cluster-test-" + "k" * 50,
        "DEBUG": "0", "RELAY_BEHIND_TLS": "0", "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "RELAY_CACHE_PREFIX": f"ct{uuid.uuid4().hex[:8]}", "RELAY_LOG_LEVEL": "WARNING",
        "CELERY_TASK_ALWAYS_EAGER": "1", "PYTHONUNBUFFERED": "1",
    })
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.update({k: str(v) for k, v in extra.items()})
    return env


def manage(env: dict, *args: str) -> str:
    done = subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=180)
    if done.returncode:
        raise RuntimeError(f"manage.py {' '.join(args[:2])} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    return done.stdout


def python_in(env: dict, code: str):
    """Run code in a Django shell on env's database; its last output line parsed as JSON."""
    return json.loads(manage(env, "shell", "-c", code).strip().splitlines()[-1])


def prepare(env: dict, upstream_base_url: str) -> str:
    """Migrate env's database and create the tenant; the API key."""
    manage(env, "migrate", "--noinput", "-v0")
    return python_in(env, SETUP.format(model=MODEL, upstream=upstream_base_url))["key"]


def wait_for(predicate, timeout: float, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return None


def is_ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _die_with_parent() -> None:
    """A test process killed (timeout, Ctrl-C) takes its servers with it: none outlives the run."""
    import ctypes

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Instance:
    """One Relay instance (`python -m relay.serve`), as production runs it."""

    def __init__(self, env: dict, log_dir: Path, module: str = "relay.serve"):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**env, "RELAY_PORT": str(self.port)}
        self.log = open(log_dir / f"relay-{self.port}.log", "ab")  # noqa: SIM115
        self.process = subprocess.Popen([sys.executable, "-m", module], cwd=ROOT, env=self.env,
                                        stdout=self.log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
        if not wait_for(lambda: is_ready(self.url) or self.process.poll() is not None, 60) or self.process.poll():
            self.stop()
            raise RuntimeError(f"Relay did not start: {Path(self.log.name).read_text()[-3000:]}")

    def stop(self, sig=signal.SIGTERM, timeout: float = 30) -> int | None:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.log.close()
        return self.process.returncode


class PrivateRedis:
    """A redis-server of our own on a free port, to stop and start at will."""

    def __init__(self):
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process = None
        self.start()

    def start(self):
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.process = subprocess.Popen([binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                         "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        preexec_fn=_die_with_parent)
        if not wait_for(self.ping, 10):
            raise RuntimeError("private redis-server did not start")

    def ping(self) -> bool:
        import redis

        try:
            return redis.Redis(port=self.port, socket_timeout=0.5, socket_connect_timeout=0.5).ping()
        except redis.RedisError:
            return False

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


class PrivatePostgres:
    """A PostgreSQL cluster of our own (initdb into a temp dir, run as the postgres user)."""

    def __init__(self):
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        if not found:
            pytest.skip("no PostgreSQL server binaries (initdb) on this machine")
        self.bin = Path(found[-1]).parent
        self.dir = Path(tempfile.mkdtemp(prefix="relay-pg-"))
        self.data = self.dir / "data"
        self.port = free_port()
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
        self._run(self.bin / "initdb", "-D", self.data, "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8")
        self.start()
        self._run(self.bin / "createdb", "-h", "127.0.0.1", "-p", self.port, "-U", "postgres", "relay")
        self.url = f"postgres://postgres@127.0.0.1:{self.port}/relay"

    def _run(self, *args):
        subprocess.run([*self.as_user, *map(str, args)], check=True, capture_output=True, timeout=120)

    def start(self):
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(self.bin / "pg_ctl", "-D", self.data, "-o", options, "-l", self.dir / "log", "-w", "start")

    def stop(self):
        self._run(self.bin / "pg_ctl", "-D", self.data, "-m", "fast", "-w", "stop")

    def destroy(self):
        with contextlib.suppress(Exception):
            self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def chat(url: str, key: str, *, stream: bool = False, content: str = "hello", timeout: float = 30) -> httpx.Response:
    body = {"model": MODEL, "messages": [{"role": "user", "content": content}], "stream": stream,
            "temperature": 0.5}
    return httpx.post(f"{url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"},
                      timeout=timeout)
