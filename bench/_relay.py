"""Shared bench plumbing: a throwaway Relay instance (own database, uvicorn subprocess) and figures."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.ports import free_port  # noqa: E402  (the repository on the path first)

SETUP = """
from accounts.actions.keys import create_api_key
from accounts.actions.organizations import create_organization
from accounts.actions.users import create_user
from agents.actions.endpoints import create_endpoint
from billing.models import ModelPrice
from decimal import Decimal
org = create_organization("Bench")
user = create_user("bench", organization=org, role="user", email="bench@example.com")
for name, url in {upstreams!r}.items():
    create_endpoint(name, deployments=[{{"name": "primary", "base_url": url, "upstream_model": name}}])
    ModelPrice.objects.create(model=name, input_per_1k=Decimal("0.001"), output_per_1k=Decimal("0.002"))
print(create_api_key(user, "bench").secret)
"""


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(pct / 100 * (len(ordered) - 1))))
    return ordered[index]


def summary_ms(values: list[float]) -> dict:
    return {"p50_ms": round(statistics.median(values) * 1000, 2), "p99_ms": round(percentile(values, 99) * 1000, 2)}


class RelayInstance:
    """Relay on its own database (DATABASE_URL's server if set, else a temp SQLite file)."""

    def __init__(self, upstreams: dict[str, str], *, workers: int = 1, extra_env: dict | None = None,
                 server: str = "uvicorn"):
        self.tmp = tempfile.mkdtemp(prefix="relay-bench-")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        base = os.environ.get("DATABASE_URL", "")
        if base.startswith("postgres"):
            self.dbname = f"relay_bench_{os.getpid()}"
            subprocess.run(["createdb", "-h", "127.0.0.1", "-U", "postgres", self.dbname], check=True)
            database_url = base.rsplit("/", 1)[0] + "/" + self.dbname
        else:
            self.dbname = None
            database_url = f"sqlite:///{self.tmp}/bench.sqlite3"
        self.env = {
            **os.environ, "DATABASE_URL": database_url, "SECRET_KEY": "bench-" + "x" * 50, "DEBUG": "0",
            "RELAY_BEHIND_TLS": "0", "ALLOWED_HOSTS": "127.0.0.1,localhost", "RELAY_LOG_LEVEL": "WARNING",
            **(extra_env or {}),
        }
        self.process = None
        try:
            self.run_manage("migrate", "-v0")
            self.key = self.run_manage("shell", "-c", SETUP.format(upstreams=upstreams)).strip().splitlines()[-1]
            self.process = subprocess.Popen(server_command(server, self.port, workers), cwd=ROOT,
                                            env={**self.env, "RELAY_PORT": str(self.port)})
            self._wait_ready()
        except BaseException:
            self.stop()  # a failed start leaves no server, database or keys behind
            raise

    def spawn(self, server: str, workers: int = 1, env: dict | None = None,
              cwd: Path | str = ROOT) -> tuple[subprocess.Popen, str]:
        """Another server process on this instance's database, on its own port, once ready (`cwd`:
        the checkout it runs, this one unless told)."""
        port = free_port()
        process = subprocess.Popen(server_command(server, port, workers), cwd=cwd,
                                   env={**self.env, "RELAY_PORT": str(port), **(env or {})})
        url = f"http://127.0.0.1:{port}"
        self._wait_ready(url)
        return process, url

    def run_manage(self, *args) -> str:
        return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=self.env, check=True,
                              capture_output=True, text=True).stdout

    def reconcile(self) -> dict:
        """`manage.py reconcile --json` on this instance's database and ledger: do the books agree after
        the run? (Its report; `ok` is False with `error` when the command could not report.)"""
        done = subprocess.run([sys.executable, "manage.py", "reconcile", "--json"], cwd=ROOT, env=self.env,
                              capture_output=True, text=True, timeout=600)
        lines = done.stdout.strip().splitlines()
        try:
            return json.loads(lines[-1])
        except (IndexError, ValueError):
            return {"ok": False, "error": done.stderr.strip()[-1000:], "discrepancies": []}

    def _wait_ready(self, url: str | None = None):
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url or self.url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError("Relay did not become ready")

    def stop(self):
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=60)  # relay.serve drains open connections first
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=20)
        if self.dbname:
            subprocess.run(["dropdb", "-h", "127.0.0.1", "-U", "postgres", "--if-exists", self.dbname], check=False)
        self._forget_redis_keys()

    def _forget_redis_keys(self):
        """Drop this run's cache and ledger keys: a shared Redis keeps them (ledger records for a day),
        and every SCAN of the test suite would walk them."""
        prefix, url = self.env.get("RELAY_CACHE_PREFIX"), self.env.get("REDIS_URL")
        if not prefix or not url or prefix == "relay":
            return
        import redis

        client = redis.Redis.from_url(url)
        for pattern in (f"{{{prefix}}}:*", f"{prefix}:*"):
            batch = []
            for key in client.scan_iter(match=pattern, count=1000):
                batch.append(key)
                if len(batch) == 1000:
                    client.delete(*batch)
                    batch = []
            if batch:
                client.delete(*batch)


def server_command(server: str, port: int, workers: int = 1) -> list[str]:
    """The command line of each ASGI server compared in bench/server_choice.py."""
    bind = ["--host", "127.0.0.1", "--port", str(port)]
    if server == "uvicorn":
        return [sys.executable, "-m", "uvicorn", "relay.asgi:application", *bind, "--workers", str(workers),
                "--log-level", "warning", "--no-access-log", "--loop", "uvloop", "--http", "httptools",
                "--lifespan", "off"]
    if server == "relay.serve":  # the production launcher: uvicorn + graceful drain (one process)
        return [sys.executable, "-m", "relay.serve"]
    if server == "daphne":
        return [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "-v", "0",
                "relay.asgi:application"]
    if server == "gunicorn":
        return [sys.executable, "-m", "gunicorn", "relay.asgi:application", "-k", "uvicorn_worker.UvicornWorker",
                "-w", str(workers), "-b", f"127.0.0.1:{port}", "--log-level", "warning"]
    raise ValueError(f"unknown server {server!r}")


def interpreter() -> dict:
    """The Python running this bench and every process it starts (sys.executable): its version and the
    interpreter a virtual environment's python stands for. Builds of one version differ: back to back,
    Relay's CPU per request was 13% lower on Debian's CPython than on a plain source build
    (bench/README.md, "Which Python"), so each result names the one it ran on."""
    return {"version": platform.python_version(), "base": os.path.realpath(sys._base_executable)}


def print_interpreter() -> None:
    python = interpreter()
    print(f"Python {python['version']} ({python['base']}): every process this bench starts runs on it", flush=True)


def print_result(figures: dict) -> None:
    print(json.dumps({**figures, "interpreter": interpreter()}, sort_keys=True))
