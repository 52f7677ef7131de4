"""`make run` in a fresh clone says what it does and ends with the URL, the demo users and what to
try first, then serves: tested by running it (SQLite and in-process layers, as a newcomer gets)."""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
VENV = Path(sys.prefix)  # the virtualenv running the tests: install is a no-op
BANNER_END = "Stop the server with Ctrl+C."


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _environment() -> dict:
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("DATABASE_", "REDIS_", "RELAY_", "DJANGO_")) and key not in {"DEBUG", "SECRET_KEY"}}
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture
def clone(tmp_path):
    if not shutil.which("git") or not shutil.which("make"):
        pytest.skip("needs git and make")
    target = tmp_path / "relay"
    subprocess.run(["git", "clone", "--quiet", "--depth", "1", f"file://{REPO}", str(target)], check=True)
    # A fresh checkout's files are newer than the venv's install stamp: age the requirements so
    # make sees the install as done (what a second `make run` sees).
    for name in ("requirements.txt", "requirements-dev.txt"):
        os.utime(target / name, (0, 0))
    return target


def _read_until(process, marker: str, deadline: float) -> str:
    lines = []
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line)
        if marker in line:
            return "".join(lines)
    raise AssertionError("make run never printed its banner:\n" + "".join(lines))


def _get(url: str, opener=None) -> tuple[int, str]:
    with (opener or urllib.request.build_opener()).open(url, timeout=10) as response:
        return response.status, response.read().decode()


def test_make_run_says_what_it_does_and_ends_with_where_who_and_what_to_try(clone):
    port, env = _free_port(), _environment()
    args = ["make", "run", f"VENV={VENV}", f"PORT={port}"]
    dry = subprocess.run([*args, "-n"], cwd=clone, env=env, capture_output=True, text=True, check=True).stdout
    assert "pip install" not in dry, "the test would install packages into the shared virtualenv"

    process = subprocess.Popen(args, cwd=clone, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, start_new_session=True)
    try:
        output = _read_until(process, BANNER_END, time.monotonic() + 45)
        url = f"http://127.0.0.1:{port}"
        assert "Migrating the SQLite database…" in output and "Seeding the demo…" in output
        assert f"Relay is starting on {url}/" in output
        for username, role in (("demo-admin", "admin"), ("demo-user", "user"), ("demo-viewer", "viewer")):
            assert re.search(rf"{username}\s+/ relay-demo-password\s+role: {role}\b", output), output
        assert "ask the Math agent: integrate x^2 sin x" in output
        assert f"Open {url}/admin/ as demo-admin" in output

        _read_until(process, "Quit the server with", time.monotonic() + 20)
        deadline, status = time.monotonic() + 10, None
        while time.monotonic() < deadline:  # runserver says so an instant before it binds
            try:
                status, _ = _get(f"{url}/healthz")
                break
            except OSError:
                time.sleep(0.2)
        assert status == 200
        status, page = _get(f"{url}/login/")
        assert status == 200 and 'name="username"' in page
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        process.stdout.close()
