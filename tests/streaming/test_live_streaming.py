"""SSE, WebSocket and the OpenAI-compatible API against a live Relay on real sockets."""

import asyncio
import json
import time

import httpx
import pytest
import websockets

from agents.models import Message
from tests.support.streams import parse_sse, sse_events

pytestmark = pytest.mark.django_db(transaction=True)
ANSWER = 1024  # tokens: Relay's default max_tokens
# Waits that end on an event; the ceiling only matters when the behaviour under test is broken.
WAIT = 30


def sse(server, key, body, **kwargs):
    with httpx.Client(base_url=server.url, timeout=30) as client:
        response = client.post("/api/v1/stream", json=body, headers={"Authorization": f"Bearer {key}"}, **kwargs)
    return response


def kinds(events):
    return [e["type"] for e in events]


def assert_protocol(events):
    """start first, done last, usage just before it; fields exactly as docs/design.md section 6."""
    assert events[0]["type"] == "start" and set(events[0]) == {"type", "conversation_id", "message_id", "agent", "model"}
    assert events[-1]["type"] == "done" and set(events[-1]) == {"type", "status", "total_tokens", "cost"}
    assert events[-2]["type"] == "usage" and set(events[-2]) == {"type", "input_tokens", "output_tokens", "cost", "model"}
    for event in events:
        if event["type"] == "token":
            assert set(event) == {"type", "content"}
        if event["type"] == "tool_call":
            assert {"type", "call_id", "tool", "status"} <= set(event) and event["status"] in ("running", "done", "error")


def test_sse_math_shows_the_tool_then_the_answer(asgi_server, user_key):
    response = sse(asgi_server, user_key, {"query": "integrate x^2", "agent_type": "math"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["cache-control"] == "no-cache" and response.headers["x-accel-buffering"] == "no"
    events = parse_sse(response.text.splitlines())
    assert_protocol(events)
    sequence = kinds(events)
    running, done = sequence.index("tool_call"), len(sequence) - 1 - sequence[::-1].index("tool_call")
    assert events[running]["status"] == "running" and events[done]["status"] == "done"
    assert done < sequence.index("token"), "the tool finishes before the tokens that use its result"
    answer = "".join(e["content"] for e in events if e["type"] == "token")
    assert r"\frac{x^{3}}{3} + C$$" in answer and events[-1]["status"] == "complete"
    assert events[-1]["total_tokens"] == events[-2]["input_tokens"] + events[-2]["output_tokens"]
    assert Message.objects.get(pk=events[0]["message_id"]).content == answer


@pytest.mark.parametrize("agent, query, expected", [
    ("rag", "How do I run Relay with PostgreSQL?", "DATABASE_URL"),
    ("general", "What is Relay?", "No language model is configured"),
])
def test_sse_other_agents(asgi_server, user_key, agent, query, expected):
    events = parse_sse(sse(asgi_server, user_key, {"query": query, "agent_type": agent}).text.splitlines())
    assert_protocol(events)
    assert expected in "".join(e["content"] for e in events if e["type"] == "token")


def test_sse_code_agent(asgi_server, user_key):
    from tests.agents.test_sandbox import require_sandbox

    require_sandbox()
    events = parse_sse(sse(asgi_server, user_key, {"query": "print(sum(range(10)))", "agent_type": "code"})
                       .text.splitlines())
    assert_protocol(events)
    tools = [e for e in events if e["type"] == "tool_call"]
    assert [t["status"] for t in tools] == ["running", "done"] and "45" in tools[1]["output"]
    assert "45" in "".join(e["content"] for e in events if e["type"] == "token")


def test_sse_refusals_are_plain_4xx_before_any_stream(asgi_server, users, user_key):
    from accounts.actions.keys import create_api_key

    viewer_key = create_api_key(users["viewer"], "v").secret
    denied = sse(asgi_server, viewer_key, {"query": "1+1", "agent_type": "math"})
    assert denied.status_code == 403 and denied.json()["error"]["code"] == "permission_denied"
    bad = sse(asgi_server, user_key, {"query": "", "agent_type": "math"})
    assert bad.status_code == 400 and "query" in bad.json()["error"]["fields"]
    assert sse(asgi_server, "rk_nope", {"query": "1", "agent_type": "math"}).status_code == 401


def test_sse_upstream_model_streams_and_disconnect_cancels_the_upstream(asgi_server, user_key, fake_upstream,
                                                                        upstream_model):
    fake_upstream.configure(tps=10, tokens=ANSWER)  # 100 s of answer: only a cancellation ends it within WAIT
    with httpx.Client(base_url=asgi_server.url, timeout=30) as client, client.stream(
        "POST", "/api/v1/stream", json={"query": "tell me a long story", "agent_type": "general",
                                        "model": upstream_model},
        headers={"Authorization": f"Bearer {user_key}"},
    ) as response:
        events = []
        for event in sse_events(response.iter_lines()):
            events.append(event)
            if sum(e["type"] == "token" for e in events) == 3:
                break
    seen = fake_upstream.wait_for_disconnect(timeout=WAIT)
    assert seen is not None and seen.client_disconnected, "the upstream call was not cancelled"
    message_id = events[0]["message_id"]
    deadline = time.monotonic() + WAIT
    while Message.objects.get(pk=message_id).status == "running" and time.monotonic() < deadline:
        time.sleep(0.02)
    stored = Message.objects.get(pk=message_id)
    assert stored.status == "cancelled"
    assert 3 <= stored.output_tokens < ANSWER and stored.content.startswith("".join(
        e["content"] for e in events if e["type"] == "token"))


def test_an_sse_runs_work_happens_in_its_requests_audit_context(asgi_server, user_key, fake_upstream, upstream_model,
                                                               monkeypatch):
    # Control: agents.api.sse.EventStreamResponse consumes the chain the middleware built (audit's
    # wraps the events to bind the request's context while they are produced), not the bare events.
    from types import SimpleNamespace

    from audit import context

    seen = []

    async def program(code, limits=None):
        seen.append((context.is_bound(), context.current().request_id))
        return SimpleNamespace(exit_code=0, killed_reason="", stdout="1\n", stderr="")

    monkeypatch.setattr("agents.kinds.code.run_python", program)
    fake_upstream.configure(tool_calls=[{"name": "run_python", "arguments": {"code": "print(1)"}}])
    response = sse(asgi_server, user_key, {"query": "Run print(1).", "agent_type": "code", "model": upstream_model})
    assert response.status_code == 200
    assert seen == [(True, response.headers["X-Request-ID"])]


async def _ws_events(ws, until="done", limit=500):
    events = []
    while len(events) < limit:
        event = json.loads(await asyncio.wait_for(ws.recv(), 20))
        events.append(event)
        if event["type"] == until:
            return events
    raise AssertionError(f"no {until} event: {kinds(events)}")


def ws_url(server):
    return server.url.replace("http://", "ws://") + "/ws/chat/"


def test_websocket_queries_with_an_api_key(asgi_server, user_key):
    async def scenario():
        async with websockets.connect(ws_url(asgi_server)) as ws:
            await ws.send(json.dumps({"type": "auth", "token": user_key}))
            assert json.loads(await ws.recv())["type"] == "authenticated"
            await ws.send(json.dumps({"type": "query", "query": "solve x^2-5x+6=0", "agent_type": "math"}))
            first = await _ws_events(ws)
            await ws.send(json.dumps({"type": "query", "query": "expand (x+1)^2", "agent_type": "math",
                                      "conversation_id": first[0]["conversation_id"]}))
            second = await _ws_events(ws)
            return first, second

    first, second = asyncio.run(scenario())
    for events in (first, second):
        stripped = [{k: v for k, v in e.items() if k != "conversation_id" or e["type"] == "start"} for e in events]
        assert_protocol(stripped)
        assert events[-1]["status"] == "complete"
    assert "2" in "".join(e.get("content", "") for e in first) and "3" in "".join(e.get("content", "") for e in first)
    assert second[0]["conversation_id"] == first[0]["conversation_id"]


def test_websocket_cancel_stops_the_upstream_and_stores_the_partial_answer(asgi_server, user_key, fake_upstream,
                                                                          upstream_model):
    fake_upstream.configure(tps=10, tokens=ANSWER)

    async def scenario():
        async with websockets.connect(ws_url(asgi_server)) as ws:
            await ws.send(json.dumps({"type": "auth", "token": user_key}))
            await ws.recv()
            await ws.send(json.dumps({"type": "query", "query": "go", "agent_type": "general",
                                      "model": upstream_model}))
            events = []
            while sum(e["type"] == "token" for e in events) < 3:
                events.append(json.loads(await asyncio.wait_for(ws.recv(), 20)))
            await ws.send(json.dumps({"type": "cancel"}))
            events += await _ws_events(ws)
            return events

    events = asyncio.run(scenario())
    assert events[-1]["type"] == "done" and events[-1]["status"] == "cancelled"
    seen = fake_upstream.wait_for_disconnect(timeout=WAIT)
    assert seen is not None and seen.client_disconnected
    stored = Message.objects.get(pk=events[0]["message_id"])
    assert stored.status == "cancelled" and 3 <= stored.output_tokens < ANSWER


@pytest.mark.parametrize("token, code", [("rk_" + "A" * 12 + "_" + "b" * 43, 4401), ("not-a-jwt", 4401)])
def test_websocket_auth_failure_closes_4401(asgi_server, token, code):
    async def scenario():
        async with websockets.connect(ws_url(asgi_server)) as ws:
            await ws.send(json.dumps({"type": "auth", "token": token}))
            error = json.loads(await ws.recv())
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await ws.recv()
            return error, closed.value.rcvd.code

    error, close_code = asyncio.run(scenario())
    assert error["type"] == "error" and close_code == code


def test_websocket_permission_failure_closes_4403_and_bad_frames_get_errors(asgi_server, users):
    from accounts.actions.keys import create_api_key

    viewer_key = create_api_key(users["viewer"], "v").secret

    async def scenario():
        async with websockets.connect(ws_url(asgi_server)) as ws:
            await ws.send(json.dumps({"type": "query", "query": "1", "agent_type": "math"}))
            unauthenticated = json.loads(await ws.recv())
        async with websockets.connect(ws_url(asgi_server)) as ws:
            await ws.send(json.dumps({"type": "auth", "token": viewer_key}))
            await ws.recv()
            replies = []
            for frame in ("{not json", json.dumps([1, 2]), json.dumps({"type": "dance"}), "x" * 70_000,
                          json.dumps({"type": "cancel"})):
                await ws.send(frame)
                replies.append(json.loads(await ws.recv())["code"])
            await ws.send(json.dumps({"type": "query", "query": "1+1", "agent_type": "math"}))
            denied = json.loads(await ws.recv())
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await ws.recv()
            return unauthenticated, replies, denied, closed.value.rcvd.code

    unauthenticated, replies, denied, code = asyncio.run(scenario())
    assert unauthenticated["code"] == "not_authenticated"
    assert replies == ["malformed_frame", "malformed_frame", "unknown_type", "invalid_frame", "nothing_to_cancel"]
    assert denied["code"] == "permission_denied" and code == 4403


def _stream_text(client, model, prompt):
    chunks = list(client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": prompt}], stream=True,
        stream_options={"include_usage": True}))
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage.completion_tokens > 0 and usage.prompt_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def test_openai_sdk_streams_from_the_local_engine(asgi_server, user_key):
    import openai

    client = openai.OpenAI(base_url=f"{asgi_server.url}/v1", api_key=user_key, max_retries=0)
    models = {m.id for m in client.models.list()}
    assert {"local-mini", "local-large", "relay-math", "relay-code", "relay-rag"} <= models
    assert r"\frac{x^{3}}{3} + C$$" in _stream_text(client, "relay-math", "integrate x^2")
    assert "No language model" in _stream_text(client, "local-mini", "hello")
    whole = client.chat.completions.create(model="relay-math", messages=[{"role": "user", "content": "2^10"}])
    assert "1024" in whole.choices[0].message.content and whole.usage.total_tokens > 0
    assert whole.choices[0].finish_reason == "stop"


def test_openai_sdk_streams_from_the_upstream_with_its_usage(asgi_server, user_key, fake_upstream,
                                                              upstream_model):
    import openai

    client = openai.OpenAI(base_url=f"{asgi_server.url}/v1", api_key=user_key, max_retries=0)
    assert upstream_model in {m.id for m in client.models.list()}
    assert _stream_text(client, upstream_model, "hello there") == "Echo: hello there"
    sent = fake_upstream.requests[-1]
    assert sent.body["stream_options"] == {"include_usage": True}
    from billing.models import UsageRecord

    record = UsageRecord.objects.latest("created_at")
    assert record.model == upstream_model and record.output_tokens == 3  # the upstream's own usage report


def test_upstream_model_calls_the_agents_tools_by_function_calling(asgi_server, user_key, fake_upstream,
                                                                    upstream_model):
    fake_upstream.configure(tool_calls=[{"name": "calculator", "arguments": {"expression": "integrate x^2"}}])
    events = parse_sse(sse(asgi_server, user_key, {"query": "what is the integral of x squared?",
                                                   "agent_type": "math", "model": upstream_model}).text.splitlines())
    assert_protocol(events)
    sequence = kinds(events)
    tool_events = [e for e in events if e["type"] == "tool_call"]
    assert [t["status"] for t in tool_events] == ["running", "done"] and tool_events[0]["tool"] == "calculator"
    assert sequence.index("token") > len(sequence) - 1 - sequence[::-1].index("tool_call")
    answer = "".join(e["content"] for e in events if e["type"] == "token")
    assert "x**3/3" in answer  # the model's second turn quotes the tool's result
    offered = fake_upstream.requests[0].body["tools"]
    assert [t["function"]["name"] for t in offered] == ["calculator"]
    assert fake_upstream.requests[1].body["messages"][-1]["role"] == "tool"


def test_openai_errors_use_openais_format(asgi_server, user_key):
    import openai

    client = openai.OpenAI(base_url=f"{asgi_server.url}/v1", api_key=user_key, max_retries=0)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-17", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{asgi_server.url}/v1", api_key="rk_bad", max_retries=0).models.list()
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="relay-math", messages=[])
    assert bad.value.body["param"] == "messages"


def _png_base64(colour="red") -> str:
    import base64
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), colour).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_sse_vision_analyses_an_attached_image(asgi_server, user_key):
    events = parse_sse(sse(asgi_server, user_key, {"query": "What colour is it?", "agent_type": "vision",
                                                   "image": _png_base64()}).text.splitlines())
    assert_protocol(events)
    tools = [e for e in events if e["type"] == "tool_call"]
    assert [t["status"] for t in tools] == ["running", "done"] and tools[0]["tool"] == "analyze_image"
    answer = "".join(e["content"] for e in events if e["type"] == "token")
    assert "PNG" in answer and "64 × 48" in answer and "#ff0000" in answer.lower()
    bad = sse(asgi_server, user_key, {"query": "x", "agent_type": "vision", "image": "not base64!"})
    assert bad.status_code == 400 and "image" in bad.json()["error"]["fields"]


def test_websocket_vision_analyses_an_attached_image(asgi_server, user_key):
    async def scenario():
        async with websockets.connect(ws_url(asgi_server)) as ws:
            await ws.send(json.dumps({"type": "auth", "token": user_key}))
            await ws.recv()
            await ws.send(json.dumps({"type": "query", "query": "Describe it", "agent_type": "vision",
                                      "image": _png_base64("blue")}))
            return await _ws_events(ws)

    events = asyncio.run(scenario())
    assert events[-1]["status"] == "complete"
    assert [e["status"] for e in events if e["type"] == "tool_call"] == ["running", "done"]
    assert "#0000ff" in "".join(e.get("content", "") for e in events).lower()
