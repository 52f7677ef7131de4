"""WebSocket and SSE abuse: no credentials, bad frames, floods, slow and silent readers."""

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from decimal import Decimal

import httpx
import pytest
import websockets
from django.conf import settings

from accounts.actions.keys import create_api_key
from agents.models import Message
from tests.conftest import assert_envelope
from tests.support.ports import free_port
from tests.support.streams import parse_sse


def ws_url(base: str) -> str:
    return base.replace("http://", "ws://") + "/ws/chat/"


async def recv_json(ws, timeout=20):
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def until_done(ws, limit=10_000):
    events = []
    for _ in range(limit):
        events.append(await recv_json(ws))
        if events[-1]["type"] == "done":
            return events
    raise AssertionError("no done event")


@pytest.fixture
def key(users):
    return create_api_key(users["user"], "abuse").secret


def test_unauthenticated_websocket_queries_are_refused_and_closed(asgi_server):
    # Control: ChatConsumer._on_query requires a user (closes 4401).
    async def scenario():
        async with websockets.connect(ws_url(asgi_server.url)) as ws:
            await ws.send(json.dumps({"type": "query", "query": "1+1", "agent_type": "math"}))
            assert (await recv_json(ws))["code"] == "not_authenticated"
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await recv_json(ws)
            assert closed.value.rcvd.code == 4401

    asyncio.run(scenario())


def test_a_foreign_origin_cannot_ride_the_session(asgi_server):
    # Control: relay.ws_security.BrowserOriginValidator (cross-site WebSocket hijacking).
    async def scenario():
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with websockets.connect(ws_url(asgi_server.url), origin="https://evil.example"):
                pass
        assert refused.value.response.status_code == 403

    asyncio.run(scenario())


def test_malformed_oversized_and_binary_frames_get_errors_and_the_socket_survives(asgi_server, key):
    # Control: ChatConsumer.receive (MAX_FRAME_BYTES, JSON object with a type).
    async def scenario():
        async with websockets.connect(ws_url(asgi_server.url), max_size=2**22) as ws:
            await ws.send(json.dumps({"type": "auth", "token": key}))
            assert (await recv_json(ws))["type"] == "authenticated"
            for frame, code in (("{not json", "malformed_frame"), ("[1, 2]", "malformed_frame"),
                                ('{"type": 7}', "malformed_frame"), ('{"type": "sudo"}', "unknown_type"),
                                ("x" * (1024 * 1024), "invalid_frame"), (b"\x00\x01binary", "invalid_frame"),
                                (json.dumps({"type": "query", "query": "x" * 70_000, "agent_type": "math"}),
                                 "invalid_frame"),
                                (json.dumps({"type": "query", "query": 5, "agent_type": ["math"]}), "invalid")):
                await ws.send(frame)
                event = await recv_json(ws)
                assert (event["type"], event["code"]) == ("error", code), (str(frame)[:40], event)
            await ws.send(json.dumps({"type": "ping"}))
            assert (await recv_json(ws))["type"] == "pong"

    asyncio.run(scenario())


@pytest.mark.slow
def test_a_thousand_sequential_queries_on_one_socket(asgi_server, key):
    # Control: runs are removed from ChatConsumer.runs when they end; nothing accumulates per query.
    count = int(os.environ.get("RELAY_WS_QUERY_COUNT", "1000"))

    async def scenario():
        async with websockets.connect(ws_url(asgi_server.url)) as ws:
            await ws.send(json.dumps({"type": "auth", "token": key}))
            await recv_json(ws)
            for i in range(count):
                await ws.send(json.dumps({"type": "query", "query": f"{i} + 1", "agent_type": "math",
                                          "cache": False}))
                events = await until_done(ws)
                assert events[-1]["status"] == "complete", events[-3:]
            await ws.send(json.dumps({"type": "cancel"}))
            assert (await recv_json(ws))["code"] == "nothing_to_cancel"  # no run left behind

    started = time.monotonic()
    asyncio.run(scenario())
    assert Message.objects.filter(role="assistant", status="complete").count() == count
    print(f"{count} sequential websocket queries in {time.monotonic() - started:.1f}s")


def test_a_flood_of_concurrent_queries_gets_too_many_requests(asgi_server, key, fake_upstream, upstream_model):
    # Control: ChatConsumer MAX_RUNNING per connection.
    from agents.consumers import MAX_RUNNING

    fake_upstream.configure(ttft=3.0, tokens=5)

    async def scenario():
        async with websockets.connect(ws_url(asgi_server.url)) as ws:
            await ws.send(json.dumps({"type": "auth", "token": key}))
            await recv_json(ws)
            for i in range(MAX_RUNNING + 12):
                await ws.send(json.dumps({"type": "query", "query": f"flood {i}", "agent_type": "general",
                                          "model": upstream_model, "cache": False}))
            refusals, starts = 0, 0
            while refusals + starts < MAX_RUNNING + 12:
                event = await recv_json(ws)
                refusals += event.get("code") == "too_many_requests"
                starts += event["type"] == "start"
            assert (starts, refusals) == (MAX_RUNNING, 12)
            await ws.send(json.dumps({"type": "cancel"}))

    asyncio.run(scenario())


def test_one_answer_at_a_time_per_conversation_whatever_the_spelling_of_its_id(asgi_server, key, fake_upstream,
                                                                              upstream_model):
    # Control: agents.consumers._conversation_key (runs are keyed by the UUID, not the string sent).
    # Without it, each spelling started another answer on the same conversation, the first one was
    # no longer tracked (nor cancelled with the connection), and MAX_RUNNING counted none of them.
    fake_upstream.configure(ttft=0, tokens=3)

    async def scenario():
        async with websockets.connect(ws_url(asgi_server.url)) as ws:
            await ws.send(json.dumps({"type": "auth", "token": key}))
            await recv_json(ws)
            query = {"type": "query", "agent_type": "general", "model": upstream_model, "cache": False}
            await ws.send(json.dumps({**query, "query": "first turn"}))
            conversation = (await until_done(ws))[-1]["conversation_id"]
            fake_upstream.configure(ttft=3.0, tokens=3)
            await ws.send(json.dumps({**query, "query": "second turn", "conversation_id": conversation}))
            assert (await recv_json(ws))["type"] == "start"
            # The query's UUIDField also takes a JSON integer (uuid.UUID(int=...)).
            spellings = [conversation.upper(), conversation.replace("-", ""), "{" + conversation + "}",
                         "urn:uuid:" + conversation, uuid.UUID(conversation).int]
            replies = []
            for spelling in spellings:
                await ws.send(json.dumps({**query, "query": "again", "conversation_id": spelling}))
                replies.append(await recv_json(ws))
            await ws.send(json.dumps({"type": "cancel", "conversation_id": uuid.UUID(conversation).int}))
            ended = await until_done(ws)
            return conversation, replies, ended

    conversation, replies, ended = asyncio.run(scenario())
    assert [(reply["type"], reply.get("code")) for reply in replies] == [("error", "conversation_busy")] * 5
    assert {reply["conversation_id"] for reply in replies} == {conversation}
    assert ended[-1]["status"] == "cancelled"  # a cancel naming it in another spelling reaches it
    answers = Message.objects.filter(conversation_id=conversation, role="assistant")
    assert sorted(answers.values_list("status", flat=True)) == ["cancelled", "complete"]


def test_a_query_in_another_users_conversation_is_recorded_once_as_a_hidden_object(asgi_server, users,
                                                                                  other_users):
    # Control: agents.history.load_history's refuse_hidden (the consumer answers the 404 as an error event).
    from agents.models import Conversation
    from audit.models import AuditEvent

    me, owner = users["user"], other_users["admin"]
    theirs = Conversation.objects.create(organization_id=owner.organization_id, user=owner, agent="math",
                                         title="secret")
    nowhere = "5f0c2a4e-8d1b-4c3e-9a7f-2b6d1e0c9a84"
    secret = create_api_key(me, "prober").secret

    async def scenario():
        async with websockets.connect(ws_url(asgi_server.url)) as ws:
            await ws.send(json.dumps({"type": "auth", "token": secret}))
            assert (await recv_json(ws))["type"] == "authenticated"
            codes = []
            for conversation in (str(theirs.pk), nowhere):
                await ws.send(json.dumps({"type": "query", "query": "1+1", "agent_type": "math",
                                          "conversation_id": conversation}))
                codes.append((await recv_json(ws))["code"])
            await ws.send(json.dumps({"type": "ping"}))
            assert (await recv_json(ws))["type"] == "pong"  # a 404 leaves the socket open
            return codes

    assert asyncio.run(scenario()) == ["not_found", "not_found"]
    hidden = AuditEvent.objects.filter(action="permission.hidden_object", actor_ref=me.pk)
    assert list(hidden.values_list("resource", flat=True)) == [f"conversation:{theirs.pk}"]


def test_sse_refuses_anonymous_malformed_and_oversized_requests(asgi_server, key):
    # Controls: api_endpoint authentication, read_json, RequestSizeLimitMiddleware.
    with httpx.Client(base_url=asgi_server.url, timeout=20) as client:
        assert_envelope(client.post("/api/v1/stream", json={"query": "1+1", "agent_type": "math"}), 401)
        auth = {"Authorization": f"Bearer {key}"}
        assert_envelope(client.post("/api/v1/stream", content=b"{oops", headers={**auth, "Content-Type":
                                                                                   "application/json"}), 400)
        assert_envelope(client.post("/api/v1/stream", content=b"x" * (settings.RELAY_MAX_BODY_BYTES + 1),
                                    headers={**auth, "Content-Type": "application/json"}), 413)


def test_a_slow_sse_reader_gets_every_token_in_order(asgi_server, key, fake_upstream, upstream_model):
    fake_upstream.configure(tokens=60)

    async def scenario():
        events = []
        async with httpx.AsyncClient(base_url=asgi_server.url, timeout=30) as client, client.stream(
            "POST", "/api/v1/stream", json={"query": "count", "agent_type": "general", "model": upstream_model},
            headers={"Authorization": f"Bearer {key}"},
        ) as response:
            async for line in response.aiter_lines():
                events += parse_sse([line])
                await asyncio.sleep(0.01)  # a reader slower than the producer
        return events

    events = asyncio.run(scenario())
    assert events[-1]["type"] == "done" and events[-1]["status"] == "complete"
    assert sum(e["type"] == "token" for e in events) == 60


# --- a client that stops reading --------------------------------------------------------------

def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def database_url() -> str:
    db = settings.DATABASES["default"]
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    return f"postgres://{db['USER'] or 'postgres'}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


@pytest.fixture
def relay_subprocess(transactional_db):
    """Relay under uvicorn in its own process, so its memory can be measured alone."""
    port = free_port()
    env = {**os.environ, "DATABASE_URL": database_url(), "DEBUG": "0", "RELAY_BEHIND_TLS": "0",
           "SECRET_KEY": os.environ.get("SECRET_KEY") or "s" * 60, "ALLOWED_HOSTS": "127.0.0.1,localhost",
           "RELAY_API_KEY_HASH_SECRET": settings.RELAY_API_KEY_HASH_SECRETS["1"], "RELAY_METRICS_ENABLED": "0"}
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "relay.asgi:application", "--host", "127.0.0.1", "--port", str(port),
         "--ws", "websockets-sansio", "--lifespan", "off", "--log-level", "warning"],
        cwd=settings.BASE_DIR, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert server.poll() is None and time.monotonic() < deadline, server.stdout.read().decode()[-3000:]
        time.sleep(0.1)
    yield server, f"http://127.0.0.1:{port}"
    server.terminate()
    server.wait(10)


class RawWebSocket:
    """A WebSocket client on a bare socket, so that "not reading" really leaves bytes unread.

    Client libraries keep reading frames into their own memory in the background; a client that
    truly stops reading leaves them in the kernel, and only then does the server feel backpressure.
    """

    def __init__(self, base: str, path: str = "/ws/chat/"):
        import base64

        host, port = base.removeprefix("http://").split(":")
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.connect((host, int(port)))
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n")
                          .encode())
        self.buffer = b""
        while b"\r\n\r\n" not in self.buffer:
            self.buffer += self.sock.recv(4096)
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        assert b" 101 " in head.split(b"\r\n", 1)[0], head

    def send_json(self, message: dict) -> None:
        payload = json.dumps(message).encode()
        mask = os.urandom(4)
        header = bytes([0x81]) + (bytes([0x80 | len(payload)]) if len(payload) < 126
                                  else bytes([0x80 | 126]) + len(payload).to_bytes(2, "big"))
        self.sock.sendall(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def _read(self, count: int) -> bytes:
        while len(self.buffer) < count:
            chunk = self.sock.recv(65536)
            assert chunk, "the server closed the connection"
            self.buffer += chunk
        data, self.buffer = self.buffer[:count], self.buffer[count:]
        return data

    def recv_json(self) -> dict:
        first, second = self._read(2)
        length = second & 0x7F
        if length == 126:
            length = int.from_bytes(self._read(2), "big")
        elif length == 127:
            length = int.from_bytes(self._read(8), "big")
        payload = self._read(length)
        return json.loads(payload) if first & 0x0F == 1 else self.recv_json()

    def close(self) -> None:
        self.sock.close()


@pytest.mark.slow
def test_a_websocket_client_that_stops_reading_does_not_grow_server_memory(relay_subprocess, users, fake_upstream):
    # Controls: uvicorn's websocket backpressure -> ChatConsumer.send awaits -> runner.stream pauses ->
    # the upstream read pauses (memory bounded); closing the socket cancels the upstream request.
    from agents.actions.endpoints import create_endpoint
    from billing.models import ModelPrice

    server, base = relay_subprocess
    create_endpoint("fake-large", deployments=[{"name": "primary", "base_url": fake_upstream.base_url,
                                             "upstream_model": "fake-large"}])
    ModelPrice.objects.create(model="fake-large", input_per_1k=Decimal("0.001"), output_per_1k=Decimal("0.002"))
    tokens, word = 30_000, "w" * 1000  # ~30 MB of answer: far more than any socket buffer holds
    fake_upstream.configure(reply=" ".join([word] * tokens), tokens=tokens)
    key = create_api_key(users["user"], "silent").secret
    silent_seconds = float(os.environ.get("RELAY_SILENT_READER_SECONDS", "60"))

    async def scenario():
        ws = RawWebSocket(base)
        ws.send_json({"type": "auth", "token": key})
        assert ws.recv_json()["type"] == "authenticated"
        # Warm up first (imports, caches, connection pools), so the baseline is the steady state.
        ws.send_json({"type": "query", "query": "warm up [[fake: tokens=5]]", "agent_type": "general",
                      "model": "fake-large", "cache": False})
        while ws.recv_json()["type"] != "done":
            pass
        ws.send_json({"type": "query", "query": "talk", "agent_type": "general", "model": "fake-large",
                      "max_tokens": 32768, "cache": False})
        while ws.recv_json()["type"] != "token":
            pass
        baseline = peak = rss_bytes(server.pid)
        deadline = time.monotonic() + silent_seconds
        while time.monotonic() < deadline:  # the client reads nothing now
            await asyncio.sleep(0.5)
            peak = max(peak, rss_bytes(server.pid))
        upstream = [r for r in fake_upstream.requests if r.stream][-1]
        completed = upstream.completed
        ws.close()
        return baseline, peak, completed

    baseline, peak, completed = asyncio.run(scenario())
    grown_mb = (peak - baseline) / 2**20
    print(f"silent reader: server RSS {baseline / 2**20:.0f} MB -> peak {peak / 2**20:.0f} MB (+{grown_mb:.1f} MB)")
    assert not completed, "the upstream answer was read to its end although the client read nothing"
    assert grown_mb < 24, f"server memory grew by {grown_mb:.1f} MB for a client that reads nothing"
    seen = fake_upstream.wait_for_disconnect(timeout=10)
    assert seen is not None and seen.client_disconnected, "closing the socket did not cancel the upstream call"


@pytest.mark.parametrize("path,body", [
    ("/api/v1/stream", {"query": "Tell me a story.", "agent_type": "general", "max_tokens": 50}),
    ("/v1/chat/completions", {"model": "fake-large", "stream": True, "max_tokens": 50,
                              "messages": [{"role": "user", "content": "Tell me a story."}]}),
])
def test_a_client_gone_before_the_first_event_holds_no_budget(asgi_server, users, fake_upstream, upstream_model,
                                                              monkeypatch, path, body):
    """The client hangs up after the run is reserved and before its stream starts (here: the body is
    cancelled at its first step, as a disconnect cancels it). Repeated, that would hold the shared
    budget until each reservation's TTL; the request's end closes the run instead: cancelled, nothing
    left reserved, and the model call (made while the response was built, agents.api.sse) cut off."""
    from agents.api import sse
    from billing.models import UsageRecord
    from billing.money import usd_to_nanos
    from tests.billing.test_live_budgets import key_budget, ledger_figures

    async def gone(run, framing, started=None):
        raise asyncio.CancelledError  # the client went away before the first event was sent
        yield  # noqa: RET503 (an async generator, as the real body is)

    monkeypatch.setattr(sse, "sse_events", gone)
    fake_upstream.configure(ttft=30)  # still thinking when the client leaves
    secret, budget = key_budget(users["user"], 10**9)
    with contextlib.suppress(httpx.HTTPError):  # the body never ends: the server gave up on it
        httpx.post(f"{asgi_server.url}{path}", json=body, headers={"Authorization": f"Bearer {secret}"}, timeout=30)
    answer = Message.objects.get(role="assistant")
    assert answer.status == Message.Status.CANCELLED
    usage = UsageRecord.objects.get(request_id=answer.request_id)
    assert usage.output_tokens == 0
    assert ledger_figures(budget) == (usd_to_nanos(usage.cost), 0), "what was billed is spent, nothing still reserved"
    assert fake_upstream.wait_for(lambda reqs: all(r.client_disconnected for r in reqs), timeout=10), \
        "the model call went on for a client that is gone"
