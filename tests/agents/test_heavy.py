"""Heavy work is admitted against per-host and per-user slots (docs/security.md, "Bounded work").

Sandboxed code, document ingestion and image analysis take a slot of the host
(RELAY_HEAVY_SLOTS) and one of the user (RELAY_HEAVY_PER_USER, counted across the cluster);
beyond them the caller gets 429 `busy` with Retry-After on every transport, never a host
running out of memory. With Redis the slots are leases in Redis (other processes and hosts
see them); embedded, they are in-process.
"""

import asyncio
import base64
import json
import os
import signal
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import websockets
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from accounts.actions.keys import create_api_key
from agents.models import Document
from tests.agents.test_sandbox import _pids_named, require_sandbox
from tests.conftest import assert_envelope
from tests.support.streams import parse_sse


@pytest.fixture(autouse=True)
def _no_leases():
    try:
        from agents import heavy
    except ImportError:  # before agents/heavy.py existed
        yield
        return
    heavy.forget()
    yield
    heavy.forget()


def _hold_400_mb(mark: str) -> str:
    """A program that takes 400 MB and keeps it until SIGUSR1 (or 8 s), so its slot stays taken."""
    return ("```python\n"
            "import ctypes, signal\n"
            "signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1])\n"
            f"ctypes.CDLL(None).prctl(15, {mark.encode()!r}, 0, 0, 0)\n"
            "block = bytearray(400 * 1024 * 1024)\n"
            "signal.sigtimedwait([signal.SIGUSR1], 8)\n"
            "print('HELD', len(block) >> 20, 'MB')\n"
            "```")


async def _until(predicate, timeout: float = 20) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.05)
    return predicate()


def test_eight_concurrent_400mb_code_runs_from_one_user_one_runs_the_rest_get_429_busy(asgi_server, users):
    require_sandbox()
    key = create_api_key(users["user"], "heavy").secret
    mark = "rh" + uuid.uuid4().hex[:12]
    body = {"query": _hold_400_mb(mark), "agent_type": "code", "cache": False}

    async def scenario():
        async with httpx.AsyncClient(base_url=asgi_server.url, timeout=60,
                                     headers={"Authorization": f"Bearer {key}"}) as client:
            runs = [asyncio.ensure_future(client.post("/api/v1/query", json=body)) for _ in range(8)]
            done, pending = set(), set(runs)
            deadline = time.monotonic() + 30
            while len(done) < 7 and pending and time.monotonic() < deadline:
                finished, pending = await asyncio.wait(pending, timeout=deadline - time.monotonic(),
                                                       return_when=asyncio.FIRST_COMPLETED)
                done |= finished
            refused = [task.result() for task in done]
            # The admitted run holds its 400 MB now; it is the only one in memory.
            await _until(lambda: len(_pids_named(mark)) >= 1)
            holding = _pids_named(mark)
            for pid in holding:
                os.kill(pid, signal.SIGUSR1)
            admitted = [await task for task in pending]
            again = await client.post("/api/v1/query", json=body | {"query": "print('slot free again')"})
            return refused, holding, admitted, again

    refused, holding, admitted, again = asyncio.run(scenario())
    assert len(refused) == 7, [r.status_code for r in refused]
    for response in refused:
        assert response.status_code == 429, (response.status_code, response.text[:300])
        assert response.json()["error"]["code"] == "busy", response.text
        assert int(response.headers["Retry-After"]) >= 1
    assert len(holding) == 1, f"{len(holding)} programs of 400 MB held at once"
    assert len(admitted) == 1 and admitted[0].status_code == 200, admitted
    answer = admitted[0].json()
    assert answer["status"] == "complete" and "HELD 400 MB" in answer["answer"], answer
    assert again.status_code == 200 and "slot free again" in again.json()["answer"], again.text


@pytest.mark.django_db
def test_the_host_limit_is_shared_by_every_user(users, settings):
    from agents import heavy

    settings.RELAY_HEAVY_SLOTS, settings.RELAY_HEAVY_PER_USER = 2, 1
    first = heavy.acquire_sync(users["user"])
    with pytest.raises(heavy.Busy) as same_user:
        heavy.acquire_sync(users["user"])  # the user's own limit
    second = heavy.acquire_sync(users["admin"])
    with pytest.raises(heavy.Busy) as host_full:
        heavy.acquire_sync(users["viewer"])  # a user with no run of their own, but the host is full
    assert "You already" in str(same_user.value.detail) and "server" in str(host_full.value.detail)
    heavy.release_sync(first)
    third = heavy.acquire_sync(users["viewer"])
    heavy.release_sync(second)
    heavy.release_sync(third)


@pytest.mark.django_db
def test_async_and_sync_callers_count_against_the_same_slots(users, settings):
    from agents import heavy

    settings.RELAY_HEAVY_PER_USER = 1

    async def scenario():
        lease = await heavy.acquire(users["user"])
        with pytest.raises(heavy.Busy):
            await asyncio.to_thread(heavy.acquire_sync, users["user"])
        await heavy.release(lease)
        async with heavy.heavy_slot(users["user"]):
            with pytest.raises(heavy.Busy):
                async with heavy.heavy_slot(users["user"]):
                    pass
        await heavy.release(await heavy.acquire(users["user"]))  # released on the way out

    asyncio.run(scenario())


@pytest.mark.django_db
def test_a_lease_left_by_a_dead_process_expires(users, settings):
    from agents import heavy

    settings.RELAY_HEAVY_PER_USER, settings.RELAY_HEAVY_LEASE_SECONDS = 1, 120
    start = time.time()
    heavy.acquire_sync(users["user"], now=start)  # never released: its process died
    with pytest.raises(heavy.Busy):
        heavy.acquire_sync(users["user"], now=start + 60)
    heavy.release_sync(heavy.acquire_sync(users["user"], now=start + 121))


@pytest.mark.django_db
def test_every_transport_answers_429_busy_with_retry_after_while_the_user_holds_a_slot(users, client_for, settings):
    from PIL import Image

    from agents import heavy
    from tests.agents.test_vision import encode

    settings.RELAY_HEAVY_PER_USER = 1
    client = client_for(users["user"], via="api_key")
    lease = heavy.acquire_sync(users["user"])
    png = encode(Image.new("RGB", (8, 8), "red"))
    responses = {
        "upload": client.post(reverse("document-list"),
                              {"file": SimpleUploadedFile("a.txt", b"Some notes.", "text/plain")}, format="multipart"),
        "vision": client.post(reverse("vision-analyze"), {"image": SimpleUploadedFile("r.png", png, "image/png")},
                              format="multipart"),
        "query": client.post(reverse("query"), {"query": "print(1)", "agent_type": "code"}, format="json"),
        "stream": client.post(reverse("stream"), {"query": "Describe it.", "agent_type": "vision",
                                                  "image": base64.b64encode(png).decode()}, format="json"),
    }
    for name, response in responses.items():
        error = assert_envelope(response, 429, "busy")
        assert int(response["Retry-After"]) >= 1, name
        assert "already" in error["message"], (name, error)
    openai = client.post("/v1/chat/completions", {"model": "relay-code", "messages": [
        {"role": "user", "content": "print(1)"}]}, format="json")
    assert openai.status_code == 429 and openai.json()["error"]["code"] == "busy" and openai["Retry-After"]
    assert not Document.objects.filter(name="a.txt").exists()
    # Another user is not held up by this one.
    other = client_for(users["admin"]).post(reverse("document-list"), {
        "file": SimpleUploadedFile("b.txt", b"Other notes.", "text/plain")}, format="multipart")
    assert other.status_code == 201, other.content
    heavy.release_sync(lease)
    again = client.post(reverse("document-list"), {"file": SimpleUploadedFile("a.txt", b"Some notes.", "text/plain")},
                        format="multipart")
    assert again.status_code == 201, again.content


def test_the_websocket_gets_a_busy_error_event_with_retry_after(asgi_server, users, settings):
    from agents import heavy

    settings.RELAY_HEAVY_PER_USER = 1
    key = create_api_key(users["user"], "ws").secret
    lease = heavy.acquire_sync(users["user"])

    async def scenario():
        async with websockets.connect(asgi_server.url.replace("http://", "ws://") + "/ws/chat/") as ws:
            await ws.send(json.dumps({"type": "auth", "token": key}))
            assert json.loads(await ws.recv())["type"] == "authenticated"
            await ws.send(json.dumps({"type": "query", "query": "print(1)", "agent_type": "code"}))
            return json.loads(await asyncio.wait_for(ws.recv(), 20))

    try:
        event = asyncio.run(scenario())
    finally:
        heavy.release_sync(lease)
    assert event["type"] == "error" and event["code"] == "busy", event
    assert event["retry_after"] >= 1


def test_a_busy_sandbox_inside_a_stream_is_a_tool_error(asgi_server, users, fake_upstream, upstream_model, settings):
    # An upstream model decides to run code mid-stream: no 429 is possible any more, so the
    # tool call fails with `busy` and the model (and the client) see why.
    from agents import heavy

    settings.RELAY_HEAVY_PER_USER = 1
    fake_upstream.configure(tool_calls=[{"name": "run_python", "arguments": {"code": "print(6 * 7)"}}])
    key = create_api_key(users["user"], "tool").secret
    lease = heavy.acquire_sync(users["user"])
    try:
        response = httpx.post(f"{asgi_server.url}/api/v1/stream", timeout=30,
                              json={"query": "What is six times seven? Compute it.", "agent_type": "code",
                                    "model": upstream_model},
                              headers={"Authorization": f"Bearer {key}"})
    finally:
        heavy.release_sync(lease)
    assert response.status_code == 200, response.text
    events = parse_sse(response.text.splitlines())
    calls = [e for e in events if e["type"] == "tool_call" and e["status"] != "running"]
    assert calls and calls[0]["status"] == "error" and "busy" in calls[0]["output"], calls
    assert events[-1]["type"] == "done"


@pytest.mark.django_db
def test_a_run_refused_after_admission_gives_its_slot_back(users, client_for, settings):
    from agents import heavy

    settings.RELAY_HEAVY_PER_USER = 1
    client = client_for(users["user"])
    missing = client.post(reverse("query"), {"query": "print(1)", "agent_type": "code",
                                             "conversation_id": str(uuid.uuid4())}, format="json")
    assert_envelope(missing, 404)
    heavy.release_sync(heavy.acquire_sync(users["user"]))  # nothing left held by the refused run


def _free(user) -> bool:
    from agents import heavy

    try:
        heavy.release_sync(heavy.acquire_sync(user))
    except heavy.Busy:
        return False
    return True


def _png() -> bytes:
    from PIL import Image

    from tests.agents.test_vision import encode

    return encode(Image.new("RGB", (8, 8), "red"))


@pytest.mark.django_db
@pytest.mark.parametrize("admitted", [True, False], ids=["slot-admitted-with-the-run", "slot-taken-by-the-tool"])
def test_a_cancelled_image_analysis_holds_its_slot_until_its_thread_ends(users, settings, monkeypatch, admitted):
    # A client that hangs up cancels its run, but nothing can stop the analysis thread: were its
    # slot given back then, hanging up again and again would decode and OCR past every cap.
    from agents import heavy
    from agents.core import RunContext
    from agents.kinds.vision import ANALYZE_IMAGE
    from agents.tools import vision

    settings.RELAY_HEAVY_PER_USER = 1
    user, started, finish = users["user"], threading.Event(), threading.Event()

    def analysing(data, **kwargs):
        started.set()
        finish.wait(60)
        return vision.ImageAnalysis(format="PNG", width=8, height=8, mode="RGB")
    monkeypatch.setattr(vision, "analyze_image", analysing)

    async def scenario():
        ctx = RunContext(query="", user=user, attachment=_png(),
                         heavy_lease=await heavy.acquire(user) if admitted else None)
        tool = asyncio.ensure_future(ANALYZE_IMAGE.call({}, ctx))
        try:
            assert await asyncio.to_thread(started.wait, 30)
            tool.cancel()
            with pytest.raises(asyncio.CancelledError):
                await tool
            await heavy.release(ctx.heavy_lease)  # what the runner does as the cancelled run ends
            with pytest.raises(heavy.Busy):
                await heavy.acquire(user)
        finally:
            finish.set()
        assert await _until(lambda: _free(user))  # given back by the thread as it ends

    asyncio.run(scenario())


class _WatchedExecutor(ThreadPoolExecutor):
    """One worker thread, and the jobs handed to it, so a test knows when one is queued."""

    def __init__(self):
        super().__init__(max_workers=1)
        self.jobs = []

    def submit(self, fn, /, *args, **kwargs):
        job = super().submit(fn, *args, **kwargs)
        self.jobs.append(job)
        return job


@pytest.mark.django_db
def test_an_analysis_cancelled_while_queued_for_a_thread_never_runs_and_gives_its_slot_back(users, settings,
                                                                                           monkeypatch):
    # Cancelling a job still queued in the executor would drop it unrun: its slot must still come back.
    from agents import heavy
    from agents.tools import vision

    settings.RELAY_HEAVY_PER_USER = 1
    user, ran, worker_free = users["user"], threading.Event(), threading.Event()
    monkeypatch.setattr(vision, "analyze_image", lambda data, **kwargs: ran.set())

    async def scenario():
        executor = _WatchedExecutor()
        loop = asyncio.get_running_loop()
        loop.set_default_executor(executor)
        loop.run_in_executor(None, worker_free.wait, 60)  # the only worker thread is busy
        try:
            analysis = asyncio.ensure_future(vision.analyze_image_async(_png(), user=user))
            assert await _until(lambda: len(executor.jobs) == 2)
            analysis.cancel()
            with pytest.raises(asyncio.CancelledError):
                await analysis
            with pytest.raises(heavy.Busy):
                await heavy.acquire(user)  # the queued job holds the slot until a thread takes it
        finally:
            worker_free.set()
        assert await _until(lambda: _free(user))
        assert not ran.is_set()

    asyncio.run(scenario())
