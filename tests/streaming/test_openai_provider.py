"""OpenAICompatibleProvider against the fake upstream: streaming, errors, retries, cancellation."""

import asyncio
import contextlib
import json
import time

import pytest
import pytest_asyncio

from agents.providers.base import ChatRequest, Finish, ProviderError, TextDelta, ToolCallRequest, Usage
from agents.providers.openai_compat import OpenAICompatibleProvider
from tests.support.ports import free_port

# Waits that end on an event; the ceiling only matters when the behaviour under test is broken,
# so it is generous enough for a loaded 2-core machine. STALL outlasts it: whatever ends a stall
# in time is the provider, not the upstream.
LONG = 30.0
STALL = 120.0
TOOLS = [{"type": "function", "function": {"name": "calculator", "parameters": {"type": "object"}}}]


@pytest.fixture
def server(fresh_upstream):
    return fresh_upstream  # tests/support/streams.py: the module's fake upstream, reset per test


@pytest_asyncio.fixture
async def provider(server):
    p = OpenAICompatibleProvider("fake", server.base_url, "sk-test", read_timeout=5, retry_backoff=0.01)
    yield p
    await p.aclose()


def req(text, **kw):
    return ChatRequest(messages=[{"role": "user", "content": text}], model="fake-mini", **kw)


async def collect(provider, request):
    return [ev async for ev in provider.stream(request)]


@pytest.mark.asyncio
async def test_deltas_concatenate_and_usage_then_finish_come_last(provider, server):
    events = await collect(provider, req("the quick brown fox"))
    deltas = [e for e in events if isinstance(e, TextDelta)]
    assert "".join(d.text for d in deltas) == "Echo: the quick brown fox"
    assert len(deltas) == 5
    assert events[-2:] == [Usage(input_tokens=3 + 4 + 4, output_tokens=5), Finish("stop")]
    body = server.requests[-1].body
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert server.requests[-1].headers["authorization"] == "Bearer sk-test"


@pytest.mark.asyncio
async def test_request_fields_and_length_finish(provider, server):
    events = await collect(provider, req("a b c d e", max_tokens=2, temperature=0.3, extra={"seed": 7}))
    assert events[-1] == Finish("length")
    body = server.requests[-1].body
    assert (body["max_tokens"], body["temperature"], body["seed"]) == (2, 0.3, 7)
    assert "tools" not in body


@pytest.mark.asyncio
async def test_no_usage_when_upstream_does_not_report_it(provider, server):
    server.configure(usage=False)
    events = await collect(provider, req("hi"))
    assert not any(isinstance(e, Usage) for e in events)
    assert events[-1] == Finish("stop")


@pytest.mark.asyncio
async def test_ttft_is_honoured_and_the_first_token_is_not_held_back(provider, server):
    server.configure(ttft=0.3, tps=1, tokens=1000)  # the whole answer would take 1000 s
    start = time.monotonic()
    async with contextlib.aclosing(provider.stream(req("hi"))) as events:
        async for ev in events:
            if isinstance(ev, TextDelta):
                ttft = time.monotonic() - start
                break
    assert ttft >= 0.3  # a lower bound holds however loaded the machine is
    # Passed on as it came, not buffered: the upstream had not finished when it arrived.
    assert server.wait_for_disconnect(LONG) is not None and not server.requests[-1].completed


@pytest.mark.asyncio
@pytest.mark.parametrize("status", [429, 503])
async def test_retries_before_first_token_then_succeeds(provider, server, status):
    server.fail_next(2, status=status)
    events = await collect(provider, req("retry me"))
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "Echo: retry me"
    assert [r.status for r in server.requests] == [status, status, 200]


@pytest.mark.asyncio
@pytest.mark.parametrize("status, code, relay_status", [
    (429, "rate_limited", 429), (500, "upstream_error", 502), (503, "upstream_error", 502)])
async def test_retries_exhausted(provider, server, status, code, relay_status):
    server.fail_next(10, status=status)
    with pytest.raises(ProviderError) as info:
        await collect(provider, req("x"))
    assert (info.value.code, info.value.status) == (code, relay_status)
    assert len(server.requests) == 3  # first try + max_retries=2


@pytest.mark.asyncio
async def test_long_retry_after_is_not_waited_for(provider, server):
    server.configure(retry_after=30)
    server.fail_next(1, status=429)
    with pytest.raises(ProviderError) as info:
        await collect(provider, req("x"))
    assert info.value.code == "rate_limited" and info.value.retry_after == 30
    assert len(server.requests) == 1


@pytest.mark.asyncio
@pytest.mark.parametrize("status, code, relay_status", [
    (400, "bad_request", 400), (401, "upstream_auth_failed", 502), (403, "upstream_auth_failed", 502)])
async def test_client_errors_are_mapped_and_not_retried(provider, server, status, code, relay_status):
    server.fail_next(1, status=status)
    with pytest.raises(ProviderError) as info:
        await collect(provider, req("x"))
    assert (info.value.code, info.value.status) == (code, relay_status)
    if status == 400:
        assert info.value.message == "Fake failure 400."  # the upstream's own message
    assert len(server.requests) == 1


@pytest.mark.asyncio
@pytest.mark.parametrize("message", ["This model's maximum context length is 8192 tokens.",
                                     "prompt is too long: 9000 tokens > 8192 maximum"])
async def test_a_context_length_refusal_is_its_own_error(provider, server, message):
    server.configure(fail_next=1, fail_status=400, fail_message=message)
    with pytest.raises(ProviderError) as info:
        await collect(provider, req("x"))
    assert (info.value.code, info.value.status, info.value.message) == ("context_window_exceeded", 400, message)


@pytest.mark.asyncio
async def test_a_503_retry_after_is_kept_for_the_router(provider, server):
    server.configure(retry_after=30, fail_next=1, fail_status=503)
    with pytest.raises(ProviderError) as info:
        await collect(provider, req("x"))
    assert info.value.retry_after == 30 and len(server.requests) == 1


@pytest.mark.asyncio
async def test_no_retry_after_first_token(provider, server):
    server.configure(drop_after=2)
    got = []
    with pytest.raises(ProviderError) as info:
        async for ev in provider.stream(req("one two three four")):
            got.append(ev)
    assert info.value.code == "upstream_error" and info.value.status == 502
    assert got == [TextDelta("Echo:"), TextDelta(" one")]
    assert len(server.requests) == 1


@pytest.mark.asyncio
async def test_garbage_in_stream(provider, server):
    server.configure(garbage_after=1)
    with pytest.raises(ProviderError) as info:
        await collect(provider, req("a b"))
    assert (info.value.code, info.value.status) == ("upstream_error", 502)


@pytest.mark.asyncio
async def test_stall_beyond_read_timeout(server):
    # Without the read timeout the provider would wait out the stall and then succeed.
    server.configure(stall_after=1, stall=STALL)
    provider = OpenAICompatibleProvider("fake", server.base_url, "k", read_timeout=0.2)
    with pytest.raises(ProviderError) as info:
        await collect(provider, req("a b c"))
    assert (info.value.code, info.value.status) == ("upstream_timeout", 504)
    rec = server.wait_for_disconnect(LONG)  # and the stalled stream was let go, mid-stall
    assert rec is not None and not rec.completed
    await provider.aclose()


@pytest.mark.asyncio
async def test_tool_call_deltas_are_assembled(provider, server):
    server.configure(tool_calls=[{"name": "calculator", "arguments": {"expression": "2**10", "exact": True}}],
                     tool_arg_chunk=5)
    events = await collect(provider, req("2**10?", tools=TOOLS))
    calls = [e for e in events if isinstance(e, ToolCallRequest)]
    assert len(calls) == 1
    assert calls[0].name == "calculator" and calls[0].call_id.startswith("call_")
    assert json.loads(calls[0].arguments) == {"expression": "2**10", "exact": True}
    assert not any(isinstance(e, TextDelta) for e in events)
    assert events[-1] == Finish("tool_calls")
    assert server.requests[-1].body["tools"] == TOOLS

    messages = [{"role": "user", "content": "2**10?"},
                {"role": "assistant", "content": None, "tool_calls": [{
                    "id": calls[0].call_id, "type": "function",
                    "function": {"name": calls[0].name, "arguments": calls[0].arguments}}]},
                {"role": "tool", "tool_call_id": calls[0].call_id, "content": "1024"}]
    events = await collect(provider, ChatRequest(messages=messages, model="m", tools=TOOLS))
    assert "1024" in "".join(e.text for e in events if isinstance(e, TextDelta))
    assert events[-1] == Finish("stop")


@pytest.mark.asyncio
async def test_two_tool_calls(provider, server):
    server.configure(tool_calls=[{"name": "a", "arguments": {"x": 1}}, {"name": "b", "arguments": {"y": 2}}])
    calls = [e for e in await collect(provider, req("go", tools=TOOLS)) if isinstance(e, ToolCallRequest)]
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("a", {"x": 1}), ("b", {"y": 2})]


@pytest.mark.asyncio
async def test_cancelling_the_consumer_closes_the_upstream_connection(provider, server):
    server.configure(tps=20, tokens=20_000)  # 1000 s of answer: only a hang-up ends it in time
    two_tokens = asyncio.Event()
    seen = []

    async def consume():
        async for ev in provider.stream(req("slow")):
            seen.append(ev)
            if len(seen) == 2:
                two_tokens.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(two_tokens.wait(), LONG)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    rec = server.wait_for_disconnect(LONG)
    assert rec is not None and not rec.completed
    assert len(seen) == 2


@pytest.mark.asyncio
async def test_stopping_between_events_with_aclosing_closes_the_connection(provider, server):
    server.configure(tps=20, tokens=20_000)
    async with contextlib.aclosing(provider.stream(req("slow"))) as events:
        async for ev in events:
            if isinstance(ev, TextDelta):
                break
    rec = server.wait_for_disconnect(LONG)
    assert rec is not None and not rec.completed


@pytest.mark.asyncio
async def test_unreachable_port():
    port = free_port()  # a port nobody listens on
    provider = OpenAICompatibleProvider("down", f"http://127.0.0.1:{port}/v1", "k", retry_backoff=0.01)
    with pytest.raises(ProviderError) as info:
        await collect(provider, req("x"))
    assert (info.value.code, info.value.status) == ("upstream_unavailable", 502)
    with pytest.raises(ProviderError):
        await provider.list_models()
    await provider.aclose()


@pytest.mark.asyncio
async def test_list_models(provider, server):
    assert await provider.list_models() == ["fake-mini", "fake-large"]
    assert server.requests[-1].path == "/v1/models"


@pytest.mark.asyncio
async def test_magic_error_and_the_provider_survives_it(provider):
    with pytest.raises(ProviderError) as info:
        await collect(provider, req("x [[fake: error=400]]"))
    assert info.value.code == "bad_request"
    assert (await collect(provider, req("y")))[-1] == Finish("stop")


# --- a server that ignores `stream: true` and answers with one chat.completion -----------------

@pytest.mark.asyncio
async def test_a_whole_completion_reads_as_its_stream_would(provider, server):
    server.configure(ignore_stream=True)
    events = await collect(provider, req("the quick brown fox"))
    deltas = [e for e in events if isinstance(e, TextDelta)]
    assert "".join(d.text for d in deltas) == "Echo: the quick brown fox"
    # in one piece that counts as its tokens (the runner splits it only to stop inside it)
    assert [(d.text, d.tokens) for d in deltas] == [("Echo: the quick brown fox", 6)]
    assert events[-2:] == [Usage(input_tokens=3 + 4 + 4, output_tokens=5), Finish("stop")]
    assert server.requests[-1].body["stream"] is True and not server.requests[-1].stream


@pytest.mark.asyncio
async def test_a_whole_completion_with_tool_calls(provider, server):
    server.configure(ignore_stream=True, tool_calls=[{"name": "calculator", "arguments": {"expression": "2+2"}}])
    events = await collect(provider, req("add", tools=TOOLS))
    calls = [e for e in events if isinstance(e, ToolCallRequest)]
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("calculator", {"expression": "2+2"})]
    assert events[-1] == Finish("tool_calls")


@pytest.mark.asyncio
async def test_a_whole_completion_past_the_size_bound_is_refused(provider, server, monkeypatch):
    from agents.providers import openai_compat

    server.configure(ignore_stream=True)
    monkeypatch.setattr(openai_compat, "MAX_WHOLE_BYTES", 100)
    with pytest.raises(ProviderError) as info:
        await collect(provider, req("the quick brown fox jumps over the lazy dog"))
    assert info.value.code == "upstream_error" and "too large" in info.value.message
