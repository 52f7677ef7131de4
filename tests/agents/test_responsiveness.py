"""A long sandboxed job must not stall the server for everyone else (issue: event loop stays free)."""

import asyncio
import os
import signal

import httpx
import pytest

from accounts.actions.keys import create_api_key
from tests.agents.test_sandbox import _alive, _marker, _pids_named, _set_comm, _wait_until, require_sandbox

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def test_other_requests_are_served_while_a_sandboxed_job_runs(asgi_server, users):
    """Proved by order, not by a stopwatch: the job waits for a signal that the test sends only
    after the other requests were answered, so a blocked server could answer them only after the
    job had been killed at its wall limit."""
    require_sandbox()
    key = create_api_key(users["user"], "k").secret
    headers = {"Authorization": f"Bearer {key}"}
    mark = _marker()
    # The signal is blocked before the process takes its name: once the test sees the name, the
    # signal is waited for, never fatal.
    code = ("import signal\nsignal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})\n" + _set_comm(mark)
            + "signal.sigwait({signal.SIGUSR1})\nprint('released')")

    def running() -> list[int]:
        return [pid for pid in _pids_named(mark) if _alive(pid)]

    async def scenario():
        async with httpx.AsyncClient(base_url=asgi_server.url, timeout=60, headers=headers) as client:
            job = asyncio.ensure_future(client.post("/api/v1/query", json={"agent_type": "code", "query": code}))
            assert await _wait_until(running, 30), "the job did not start"
            for path in ("/healthz", "/api/v1/me", "/api/v1/agents/"):
                response = await client.get(path)
                assert response.status_code == 200, (path, response.status_code)
            assert running() and not job.done(), "the other requests were answered only after the job ended"
            for pid in running():
                os.kill(pid, signal.SIGUSR1)
            return (await job).json()

    answer = asyncio.run(scenario())
    assert "released" in answer["answer"], answer
