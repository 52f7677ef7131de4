"""The fake upstream speaks the protocol well enough for the official openai SDK."""

import json

import httpx
import openai
import pytest

TOOLS = [{"type": "function", "function": {
    "name": "calculator", "description": "Evaluate arithmetic.",
    "parameters": {"type": "object", "properties": {"expression": {"type": "string"}}}}}]


@pytest.fixture
def server(fresh_upstream):
    return fresh_upstream  # tests/support/streams.py: the module's fake upstream, reset per test


@pytest.fixture
def client(server):
    with openai.OpenAI(base_url=server.base_url, api_key="sk-test", max_retries=0, timeout=30) as c:
        yield c


def user(text):
    return [{"role": "user", "content": text}]


def test_stream_with_usage_in_final_chunk(client, server):
    stream = client.chat.completions.create(
        model="fake-mini", messages=user("hello brave world"), stream=True,
        stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Echo: hello brave world"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    last = chunks[-1]
    assert last.choices == []
    assert last.usage.completion_tokens == 4
    assert last.usage.prompt_tokens == 3 + 4 + 3
    assert last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens
    rec = server.requests[-1]
    assert rec.stream and rec.completed and rec.client_disconnected is False
    assert rec.headers["authorization"] == "Bearer sk-test"
    assert rec.body["stream_options"] == {"include_usage": True}


def test_stream_without_include_usage_has_no_usage_chunk(client):
    chunks = list(client.chat.completions.create(model="m", messages=user("hi"), stream=True))
    assert all(c.choices for c in chunks) and all(c.usage is None for c in chunks)


def test_usage_can_be_switched_off(client, server):
    server.configure(usage=False)
    chunks = list(client.chat.completions.create(
        model="m", messages=user("hi"), stream=True, stream_options={"include_usage": True}))
    assert all(c.usage is None for c in chunks)


def test_non_stream(client):
    resp = client.chat.completions.create(model="fake-large", messages=user("two words"))
    assert resp.object == "chat.completion"
    assert resp.model == "fake-large"
    assert resp.choices[0].message.content == "Echo: two words"
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage.completion_tokens == 3


def test_fixed_reply_token_count_and_max_tokens(client, server):
    server.configure(reply="alpha beta", tokens=5)
    resp = client.chat.completions.create(model="m", messages=user("x"))
    assert resp.choices[0].message.content == "alpha beta alpha beta alpha"
    resp = client.chat.completions.create(model="m", messages=user("x"), max_tokens=2)
    assert resp.choices[0].message.content == "alpha beta"
    assert resp.choices[0].finish_reason == "length"


def test_magic_overrides_one_request_and_is_not_echoed(client, server):
    resp = client.chat.completions.create(model="m", messages=user("hi [[fake: reply=\"fixed\"]]"))
    assert resp.choices[0].message.content == "fixed"
    resp = client.chat.completions.create(model="m", messages=user("hi [[fake: tokens=1]]"))
    assert resp.choices[0].message.content == "Echo:"
    assert client.chat.completions.create(model="m", messages=user("hi")).choices[0].message.content == "Echo: hi"


def test_tool_call_round_trip_streamed(client, server):
    server.configure(tool_calls=[{"name": "calculator", "arguments": {"expression": "6*7"}}], tool_arg_chunk=4)
    messages = user("what is 6*7?")
    chunks = list(client.chat.completions.create(model="m", messages=messages, tools=TOOLS, stream=True))
    pieces = [tc for c in chunks for tc in (c.choices[0].delta.tool_calls or [])]
    assert len(pieces) > 3  # name first, then arguments in several pieces
    assert pieces[0].id and pieces[0].type == "function" and pieces[0].function.name == "calculator"
    args = "".join(p.function.arguments or "" for p in pieces)
    assert json.loads(args) == {"expression": "6*7"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"

    messages += [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": pieces[0].id, "type": "function", "function": {"name": "calculator", "arguments": args}}]},
        {"role": "tool", "tool_call_id": pieces[0].id, "content": "42"}]
    resp = client.chat.completions.create(model="m", messages=messages, tools=TOOLS)
    assert "42" in resp.choices[0].message.content
    assert resp.choices[0].finish_reason == "stop"


def test_tool_call_non_stream_and_only_when_tools_sent(client, server):
    server.configure(tool_calls=[{"name": "calculator", "arguments": '{"expression": "1+1"}', "id": "call_x"}])
    msg = client.chat.completions.create(model="m", messages=user("1+1"), tools=TOOLS).choices[0].message
    assert msg.content is None
    assert msg.tool_calls[0].id == "call_x"
    assert json.loads(msg.tool_calls[0].function.arguments) == {"expression": "1+1"}
    assert client.chat.completions.create(model="m", messages=user("1+1")).choices[0].message.content == "Echo: 1+1"


@pytest.mark.parametrize("status, exc", [
    (400, openai.BadRequestError), (401, openai.AuthenticationError), (429, openai.RateLimitError),
    (500, openai.InternalServerError), (503, openai.InternalServerError)])
def test_errors_surface_as_sdk_exceptions(client, server, status, exc):
    server.fail_next(1, status=status)
    with pytest.raises(exc) as info:
        client.chat.completions.create(model="m", messages=user("hi"), stream=True)
    assert info.value.status_code == status
    assert info.value.body["message"] == f"Fake failure {status}."
    # the next request succeeds
    assert client.chat.completions.create(model="m", messages=user("hi")).choices[0].message.content


def test_fail_next_counts_down(client, server):
    server.configure(retry_after=0)
    server.fail_next(2, status=429)
    for _ in range(2):
        with pytest.raises(openai.RateLimitError) as info:
            client.chat.completions.create(model="m", messages=user("hi"))
        assert info.value.response.headers["retry-after"] == "0"
    client.chat.completions.create(model="m", messages=user("hi"))
    assert [r.status for r in server.requests] == [429, 429, 200]


def test_magic_error(client):
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="m", messages=user("hi [[fake: error=429]]"))


def test_api_key_enforced(server):
    server.configure(api_key="sk-right")
    with openai.OpenAI(base_url=server.base_url, api_key="sk-wrong", max_retries=0) as c:
        with pytest.raises(openai.AuthenticationError):
            c.models.list()
    with openai.OpenAI(base_url=server.base_url, api_key="sk-right", max_retries=0) as c:
        assert [m.id for m in c.models.list()] == ["fake-mini", "fake-large"]


def test_bad_request_and_unknown_path(server):
    r = httpx.post(server.base_url + "/chat/completions", content=b"{nope")
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    r = httpx.post(server.base_url + "/chat/completions", json={"model": "m"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
    assert httpx.get(server.base_url + "/nope").status_code == 404


def test_drop_mid_stream_surfaces_as_connection_error(client, server):
    server.configure(drop_after=2)
    got = []
    with pytest.raises(openai.APIConnectionError):
        for c in client.chat.completions.create(model="m", messages=user("a b c d"), stream=True):
            got.append(c.choices[0].delta.content)
    assert got == ["", "Echo:", " a"]
    assert not server.requests[-1].completed


def test_sync_client_closing_early_is_recorded_as_disconnect(client, server):
    server.configure(tps=50, tokens=50_000)  # 1000 s of answer: it cannot end by itself first
    stream = client.chat.completions.create(model="m", messages=user("x"), stream=True)
    next(iter(stream))
    stream.close()
    rec = server.wait_for_disconnect(30)  # returns at the disconnect; the ceiling is for a loaded machine
    assert rec is not None and rec.client_disconnected and not rec.completed


@pytest.mark.asyncio
async def test_async_sdk_stream(server):
    async with openai.AsyncOpenAI(base_url=server.base_url, api_key="k", max_retries=0) as c:
        stream = await c.chat.completions.create(
            model="m", messages=user("async hello"), stream=True, stream_options={"include_usage": True})
        chunks = [chunk async for chunk in stream]
        assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == "Echo: async hello"
        assert chunks[-1].usage.completion_tokens == 3
        with pytest.raises(openai.InternalServerError):
            await c.chat.completions.create(model="m", messages=user("x [[fake: error=503]]"))
        assert [m.id async for m in c.models.list()] == ["fake-mini", "fake-large"]
