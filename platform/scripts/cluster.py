#!/usr/bin/env python3
"""A Relay cluster on this machine: N instances, a Celery worker and beat, and nginx in front.

    python platform/scripts/cluster.py start [-n 3]   # make cluster N=3
    python platform/scripts/cluster.py stop            # make cluster-stop
    python platform/scripts/cluster.py restart         # make cluster-restart (rolling, no failed request)
    python platform/scripts/cluster.py status

Everything it starts is recorded in <state dir>/state.json (default var/cluster/) with its pid,
and `stop` stops exactly those processes (after checking each pid still runs the command it
started), never anything found by name. nginx runs as a private instance (its own prefix, pid
file and temp directories under the state dir), so the system's nginx is never touched.

Needs PostgreSQL and Redis: DATABASE_URL and REDIS_URL (defaults: the local servers, database
`relay_cluster`, created if missing). SECRET_KEY is generated once into the state dir unless set.
"""

# ruff: noqa: S603, S607  (runs the commands it is written to run: python, nginx, psql)
from __future__ import annotations

import argparse
import http.client
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PYTHON = os.environ.get("RELAY_PYTHON") or sys.executable
DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/relay_cluster"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
NGINX_TEMP_DIRS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")


class Cluster:
    def __init__(self, state_dir: Path):
        self.dir = state_dir
        self.state_file = state_dir / "state.json"
        self.logs = state_dir / "logs"

    # --- state ------------------------------------------------------------------------------
    def load(self) -> dict:
        return json.loads(self.state_file.read_text()) if self.state_file.exists() else {}

    def save(self, state: dict) -> None:
        self.state_file.write_text(json.dumps(state, indent=2))

    def env(self, state: dict) -> dict:
        return {**os.environ, **state["env"], "PYTHONUNBUFFERED": "1"}

    # --- processes --------------------------------------------------------------------------
    def spawn(self, name: str, command: list[str], env: dict) -> dict:
        self.logs.mkdir(parents=True, exist_ok=True)
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 (the child keeps it)
        # Own session: `make` ending (or Ctrl-C in its terminal) does not take the cluster down.
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
        return {"name": name, "pid": process.pid, "command": command}

    def start_instance(self, state: dict, index: int, port: int) -> dict:
        name = f"api{index}"
        metrics_dir = self.dir / "metrics" / name
        env = {**self.env(state), "RELAY_PORT": str(port), "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
               "RELAY_INSTANCE": name}
        # Without the variable: metrics modules would create files in the directory while importing.
        plain_env = {k: v for k, v in env.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
        prepared = subprocess.run([PYTHON, "manage.py", "prepare_metrics_dir", str(metrics_dir)], cwd=ROOT,
                                  env=plain_env, capture_output=True, text=True)
        if prepared.returncode:
            raise RuntimeError(f"prepare_metrics_dir failed for {name}:\n{prepared.stderr[-2000:]}")
        entry = self.spawn(name, [PYTHON, "-m", "relay.serve"], env)
        entry["port"] = port
        return entry

    def manage(self, state: dict, *args: str) -> None:
        subprocess.run([PYTHON, "manage.py", *args], cwd=ROOT, env=self.env(state), check=True)

    # --- nginx ------------------------------------------------------------------------------
    def nginx_prefix(self) -> Path:
        return self.dir / "nginx"

    def render_nginx(self, state: dict, down: set[str] = frozenset()) -> Path:
        prefix = self.nginx_prefix()
        servers = "\n".join(
            f"        server 127.0.0.1:{i['port']} max_fails=3 fail_timeout=10s{' down' if i['name'] in down else ''};"
            for i in state["instances"])
        temp = "\n".join(f"    {kind}_temp_path {prefix / 'temp' / kind};" for kind in NGINX_TEMP_DIRS)
        user = "user nobody nogroup;\n" if os.geteuid() == 0 else ""
        conf = f"""# Rendered by platform/scripts/cluster.py; edit platform/nginx/proxy.conf instead.
{user}worker_processes {state.get('nginx_workers', 'auto')};
pid {prefix / 'nginx.pid'};
error_log {prefix / 'error.log'} warn;
events {{ worker_connections 4096; }}
http {{
{temp}
    access_log {prefix / 'access.log'} combined buffer=64k flush=1s;
    map $http_upgrade $connection_upgrade {{ default upgrade; "" ""; }}
    upstream relay {{
        least_conn;
{servers}
        keepalive 64;
        keepalive_timeout 60s;
    }}
    server {{
        listen {state['nginx_host']}:{state['nginx_port']};
        include {ROOT / 'platform' / 'nginx' / 'proxy.conf'};
    }}
}}
"""
        path = prefix / "nginx.conf"
        path.write_text(conf)
        return path

    def start_nginx(self, state: dict) -> dict:
        prefix = self.nginx_prefix()
        for kind in NGINX_TEMP_DIRS:
            (prefix / "temp" / kind).mkdir(parents=True, exist_ok=True)
            if os.geteuid() == 0:  # workers run as nobody and write request bodies here
                shutil.chown(prefix / "temp" / kind, "nobody", "nogroup")
        conf = self.render_nginx(state)
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        subprocess.run([nginx, "-t", "-q", "-p", str(prefix), "-c", str(conf)], check=True)
        return self.spawn("nginx", [nginx, "-p", str(prefix), "-c", str(conf), "-g", "daemon off;"], self.env(state))

    def reload_nginx(self, state: dict, down: set[str] = frozenset()) -> None:
        """Apply a new upstream list; returns once new workers run (old ones finish their requests)."""
        self.render_nginx(state, down)
        master = state["nginx"]["pid"]
        before = set(children(master))
        os.kill(master, signal.SIGHUP)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not (set(children(master)) - before):
            time.sleep(0.05)
        time.sleep(0.2)  # let the old workers stop accepting

    # --- commands ---------------------------------------------------------------------------
    def start(self, args) -> None:
        if alive_entries(self.load()):
            sys.exit(f"A cluster is already running (state in {self.dir}); `make cluster-stop` first.")
        self.dir.mkdir(parents=True, exist_ok=True)
        state = {"env": cluster_env(self.dir), "nginx_host": args.host, "nginx_port": args.port,
                 "nginx_workers": args.nginx_workers, "instances": []}
        ensure_database(state["env"]["DATABASE_URL"])
        self.save(state)
        self.manage(state, "migrate", "--noinput", "-v0")
        try:
            for index in range(1, args.instances + 1):
                state["instances"].append(self.start_instance(state, index, args.base_port + index - 1))
                self.save(state)
            if args.celery:
                celery = [PYTHON, "-m", "celery", "-A", "relay"]
                state["worker"] = self.spawn("worker", [*celery, "worker", "-l", "warning", "-c", "2"], self.env(state))
                state["beat"] = self.spawn("beat", [*celery, "beat", "-l", "warning", "-s",
                                                    str(self.dir / "celerybeat-schedule")], self.env(state))
                self.save(state)
            for instance in state["instances"]:
                wait_ready(f"http://127.0.0.1:{instance['port']}/readyz", args.timeout, instance, self.logs)
            state["nginx"] = self.start_nginx(state)
            self.save(state)
            wait_ready(f"http://{args.host}:{args.port}/readyz", args.timeout, state["nginx"], self.logs)
        except BaseException:
            self.stop(None)
            raise
        print(f"Relay cluster: {len(state['instances'])} instance(s) behind http://{args.host}:{args.port}/ "
              f"(state and logs in {self.dir})")

    def stop(self, _args) -> None:
        state = self.load()
        entries = [state.get("nginx"), *state.get("instances", []), state.get("worker"), state.get("beat")]
        for entry in entries:
            if entry and is_ours(entry):
                # nginx: SIGQUIT is its graceful stop; the others drain on SIGTERM.
                os.kill(entry["pid"], signal.SIGQUIT if entry["name"] == "nginx" else signal.SIGTERM)
        drain = int(state.get("env", {}).get("RELAY_DRAIN_SECONDS", "30")) + 10
        for entry in entries:
            if entry:
                stop_wait(entry, drain)
        self.state_file.unlink(missing_ok=True)
        print("Relay cluster stopped.")

    def restart(self, args) -> None:
        """Rolling restart: one instance at a time out of nginx, drained, restarted, ready, back in."""
        state = self.load()
        if not state.get("nginx") or not is_ours(state["nginx"]):
            sys.exit("No cluster is running here.")
        drain = int(state["env"].get("RELAY_DRAIN_SECONDS", "30")) + 10
        for position, instance in enumerate(list(state["instances"])):
            self.reload_nginx(state, down={instance["name"]})
            if is_ours(instance):
                os.kill(instance["pid"], signal.SIGTERM)  # drains its in-flight requests and streams
                stop_wait(instance, drain)
            index = int(instance["name"].removeprefix("api"))
            fresh = self.start_instance(state, index, instance["port"])
            state["instances"][position] = fresh
            self.save(state)
            wait_ready(f"http://127.0.0.1:{fresh['port']}/readyz", args.timeout, fresh, self.logs)
            self.reload_nginx(state)
            print(f"restarted {fresh['name']} (pid {fresh['pid']})", flush=True)

    def status(self, _args) -> None:
        state = self.load()
        for entry in [*state.get("instances", []), state.get("worker"), state.get("beat"), state.get("nginx")]:
            if entry:
                print(f"{entry['name']:8} pid {entry['pid']:>7}  {'running' if is_ours(entry) else 'stopped'}")


def cluster_env(state_dir: Path) -> dict:
    secret_file = state_dir / "secret_key"
    if not os.environ.get("SECRET_KEY") and not secret_file.exists():
        secret_file.write_text(secrets.token_urlsafe(50))
        secret_file.chmod(0o600)
    return {
        "DATABASE_URL": os.environ.get("DATABASE_URL", DEFAULT_DATABASE_URL),
        "REDIS_URL": os.environ.get("REDIS_URL", DEFAULT_REDIS_URL),
        "SECRET_KEY": os.environ.get("SECRET_KEY") or secret_file.read_text().strip(),
        "DEBUG": "0",
        "ALLOWED_HOSTS": os.environ.get("ALLOWED_HOSTS", "127.0.0.1,localhost"),
        "RELAY_BEHIND_TLS": os.environ.get("RELAY_BEHIND_TLS", "0"),  # a lab cluster speaks plain HTTP
        "RELAY_TRUSTED_PROXY_COUNT": "1",  # nginx appends the client's address to X-Forwarded-For
        "RELAY_DRAIN_SECONDS": os.environ.get("RELAY_DRAIN_SECONDS", "30"),
        "CELERY_TASK_ALWAYS_EAGER": "0",
    }


def ensure_database(url: str) -> None:
    if not url.startswith("postgres"):
        return
    base, name = url.rsplit("/", 1)
    if not name.replace("_", "").isalnum():
        sys.exit(f"Unexpected database name {name!r} in DATABASE_URL.")
    query = f"SELECT 1 FROM pg_database WHERE datname='{name}'"  # noqa: S608 (name checked above)
    check = subprocess.run(["psql", base + "/postgres", "-tAc", query], capture_output=True, text=True)
    if check.returncode == 0 and "1" not in check.stdout:
        subprocess.run(["psql", base + "/postgres", "-qc", f'CREATE DATABASE "{name}"'], check=True)


def children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def is_ours(entry: dict) -> bool:
    """Does the recorded pid still run the command we started (not a recycled pid)?"""
    try:
        cmdline = Path(f"/proc/{entry['pid']}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    joined = b" ".join(cmdline)  # nginx rewrites its title: match parts, not argv positions
    if not all(part.encode() in joined for part in entry["command"][1:3]):
        return False
    return not Path(f"/proc/{entry['pid']}/stat").read_text().split(") ", 1)[1].startswith("Z")


def alive_entries(state: dict) -> list[dict]:
    entries = [state.get("nginx"), *state.get("instances", []), state.get("worker"), state.get("beat")]
    return [e for e in entries if e and is_ours(e)]


def stop_wait(entry: dict, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while is_ours(entry) and time.monotonic() < deadline:
        reap(entry["pid"])
        time.sleep(0.05)
    if is_ours(entry):
        print(f"{entry['name']} did not stop in {seconds:.0f} s; killing it", file=sys.stderr)
        os.kill(entry["pid"], signal.SIGKILL)
    reap(entry["pid"])


def reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)  # our own child when started by this process
    except ChildProcessError:
        pass


def wait_ready(url: str, timeout: float, entry: dict, logs: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 (our own http URL)
                if response.status == 200:
                    return
        # HTTPException too: before the instance listens, a poll from an ephemeral port equal to
        # the target port connects to itself and reads back its own request (BadStatusLine).
        except (urllib.error.URLError, OSError, http.client.HTTPException):
            pass
        if not is_ours(entry):
            tail = (logs / f"{entry['name']}.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{entry['name']} exited while starting:\n{tail}")
        time.sleep(0.1)
    raise RuntimeError(f"{entry['name']} not ready at {url} after {timeout:.0f} s (log: {logs / entry['name']}.log)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state-dir", type=Path, default=Path(os.environ.get("RELAY_CLUSTER_DIR",
                                                                             ROOT / "var" / "cluster")))
    commands = parser.add_subparsers(dest="command", required=True)
    start = commands.add_parser("start")
    start.add_argument("-n", "--instances", type=int, default=3)
    start.add_argument("--host", default="127.0.0.1")
    start.add_argument("--port", type=int, default=8080, help="nginx listens here")
    start.add_argument("--base-port", type=int, default=8101, help="instance i listens on base-port + i - 1")
    start.add_argument("--no-celery", dest="celery", action="store_false", help="no worker and beat")
    start.add_argument("--nginx-workers", default="auto")
    start.add_argument("--timeout", type=float, default=60)
    restart = commands.add_parser("restart")
    restart.add_argument("--timeout", type=float, default=60)
    commands.add_parser("stop")
    commands.add_parser("status")
    args = parser.parse_args(argv)
    cluster = Cluster(args.state_dir.resolve())
    getattr(cluster, args.command)(args)


if __name__ == "__main__":
    main()
