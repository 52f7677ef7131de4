"""A uvicorn process serving relay.asgi on a socket it inherits: a real second (or third) instance for tests."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.support.ports import bound_socket

ROOT = Path(__file__).resolve().parents[1]


class UvicornWorker:
    """Listening before it starts (the socket is bound here), so `url` is valid at once."""

    def __init__(self, env: dict, *, ready_path: str = "/healthz", any_answer: bool = False):
        self.ready_path, self.any_answer = ready_path, any_answer
        self.socket = bound_socket(backlog=128)
        self.url = f"http://127.0.0.1:{self.socket.getsockname()[1]}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "relay.asgi:application", "--fd", str(self.socket.fileno()),
             "--lifespan", "off", "--log-level", "warning"],
            cwd=ROOT, env=env, pass_fds=[self.socket.fileno()], stderr=subprocess.PIPE)

    def wait_ready(self, deadline: float) -> None:
        """Until ready_path answers 200 (any status with any_answer); the process's stderr if it died first."""
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(self.process.stderr.read().decode()[-3000:])
            try:
                status = httpx.get(f"{self.url}{self.ready_path}", timeout=1).status_code
                if status == 200 or self.any_answer:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise AssertionError("worker did not start")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process.stderr.close()
        self.socket.close()


def start_workers(envs: list[dict], *, timeout: float = 60, **readiness) -> list[UvicornWorker]:
    """One worker per environment, all ready (or all stopped and the failure raised)."""
    workers = [UvicornWorker(env, **readiness) for env in envs]
    deadline = time.monotonic() + timeout
    try:
        for worker in workers:
            worker.wait_ready(deadline)
    except BaseException:
        for worker in workers:
            worker.stop()
        raise
    return workers
