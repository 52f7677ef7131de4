"""Provider for any OpenAI-compatible endpoint (OpenAI, vLLM, Ollama, llama.cpp, LiteLLM, ...).

Speaks the wire protocol with httpx directly rather than through the ``openai`` SDK:

* cancellation is exact: the response is ours and is closed in a ``finally``, which closes the
  socket when the consuming task is cancelled mid-stream (a half-read HTTP/1.1 response can't be
  pooled), so the upstream stops generating (and billing) at once;
* the hot path pays one ``json.loads`` per chunk, not a pydantic model per chunk;
* the installed SDK (3.x) runs on its own ``httpx2`` stack, so it would be a second connection
  pool and a second exception hierarchy beside the httpx the rest of Relay uses.

Event order: TextDelta*, ToolCallRequest* (complete, when finish_reason arrives), Usage?, Finish.
Consumers that may stop early should iterate inside ``contextlib.aclosing(provider.stream(...))``
so the connection closes at once even when they stop between events.
"""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from collections.abc import AsyncIterator

import httpx

from .base import ChatRequest, Finish, ProviderError, ProviderEvent, TextDelta, ToolCallRequest, Usage

MAX_RETRY_AFTER = 2.0  # seconds; a longer Retry-After is not worth holding a user request for


class OpenAICompatibleProvider:
    def __init__(self, name: str, base_url: str, api_key: str | None, *, connect_timeout: float = 5,
                 read_timeout: float = 60, max_retries: int = 2, retry_backoff: float = 0.2,
                 max_connections: int = 1000):
        self.name = name
        self.base_url = base_url.rstrip("/")
        self.max_retries = max_retries
        self.retry_backoff = retry_backoff
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        # read is the longest silence tolerated between two chunks, not the whole answer's time.
        self._timeout = httpx.Timeout(read_timeout, connect=connect_timeout, pool=connect_timeout)
        self._limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=100)
        self._client: httpx.AsyncClient | None = None
        self._client_loop: asyncio.AbstractEventLoop | None = None

    def _http(self) -> httpx.AsyncClient:
        # Pooled connections belong to one event loop; tests and management commands may run
        # several loops in one process, so a new loop gets its own client.
        loop = asyncio.get_running_loop()
        if self._client is None or self._client_loop is not loop:
            self._client = httpx.AsyncClient(headers=self._headers, timeout=self._timeout, limits=self._limits)
            self._client_loop = loop
        return self._client

    async def aclose(self) -> None:
        if self._client is not None and self._client_loop is asyncio.get_running_loop():
            await self._client.aclose()
        self._client = self._client_loop = None

    def _body(self, request: ChatRequest) -> dict:
        body: dict = {"model": request.model, "messages": request.messages, "stream": True,
                      "stream_options": {"include_usage": True}}
        if request.max_tokens is not None:
            body["max_tokens"] = request.max_tokens
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.tools:
            body["tools"] = request.tools
        body.update(request.extra)
        # extra={"stream_options": None} drops a field an older server rejects
        return {k: v for k, v in body.items() if v is not None}

    async def _open(self, method: str, path: str, body: dict | None = None) -> httpx.Response:
        """Send with retries; return an open (streaming) response with status < 400.

        Only failures that come before any answer are retried: nothing has reached the caller yet.
        """
        client = self._http()
        for attempt in range(self.max_retries + 1):
            try:
                req = client.build_request(method, self.base_url + path, json=body)
                resp = await client.send(req, stream=True)
            except httpx.HTTPError as exc:
                err = _transport_error(exc, before_response=True)
            else:
                if resp.status_code < 400:
                    return resp
                try:
                    await resp.aread()
                except httpx.HTTPError:
                    pass  # the status alone is enough to map the error
                finally:
                    await resp.aclose()
                err = _status_error(resp)
            if not err.retryable or attempt >= self.max_retries:
                raise err
            await asyncio.sleep(self._delay(attempt, err))
        raise AssertionError("unreachable")

    def _delay(self, attempt: int, err: ProviderError) -> float:
        retry_after = getattr(err, "retry_after", None)
        if retry_after is not None:
            return retry_after
        # full jitter so a burst of requests that failed together doesn't retry together
        return self.retry_backoff * (2 ** attempt) * random.uniform(0.5, 1.0)

    async def stream(self, request: ChatRequest) -> AsyncIterator[ProviderEvent]:
        resp = await self._open("POST", "/chat/completions", self._body(request))
        try:
            async for event in _parse_stream(resp):
                yield event
        except httpx.HTTPError as exc:
            raise _transport_error(exc, before_response=False) from exc
        finally:
            await resp.aclose()

    async def list_models(self) -> list[str]:
        resp = await self._open("GET", "/models")
        try:
            data = json.loads(await resp.aread())
            return [m["id"] for m in data["data"]]
        except httpx.HTTPError as exc:
            raise _transport_error(exc, before_response=False) from exc
        except (ValueError, KeyError, TypeError) as exc:
            raise ProviderError("upstream_error", "malformed model list from upstream", 502) from exc
        finally:
            await resp.aclose()

    def __repr__(self) -> str:
        return f"OpenAICompatibleProvider({self.name!r}, {self.base_url!r})"


async def _parse_stream(resp: httpx.Response) -> AsyncIterator[ProviderEvent]:
    calls: dict[int, dict] = {}
    finish: str | None = None
    usage: dict | None = None
    done = False
    async for line in resp.aiter_lines():
        if not line.startswith("data:"):
            continue  # blank separators, ": keep-alive" comments, "event:" lines
        data = line[5:].strip()
        if data == "[DONE]":
            done = True
            break
        try:
            chunk = json.loads(data)
        except ValueError:
            raise ProviderError("upstream_error", "malformed stream from upstream", 502) from None
        if not isinstance(chunk, dict):
            raise ProviderError("upstream_error", "malformed stream from upstream", 502)
        if chunk.get("error"):  # vLLM/LiteLLM report mid-stream failures as an error chunk
            err = chunk["error"]
            msg = err.get("message") if isinstance(err, dict) else str(err)
            raise ProviderError("upstream_error", f"upstream error: {msg}", 502)
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            if delta.get("content"):
                yield TextDelta(delta["content"])
            for tc in delta.get("tool_calls") or ():
                slot = calls.setdefault(tc.get("index", len(calls)), {"id": None, "name": "", "args": []})
                if tc.get("id"):
                    slot["id"] = tc["id"]
                fn = tc.get("function") or {}
                if fn.get("name"):
                    slot["name"] += fn["name"]
                if fn.get("arguments"):
                    slot["args"].append(fn["arguments"])
            if choice.get("finish_reason"):
                finish = choice["finish_reason"]
                for call in _drain(calls):
                    yield call
        if chunk.get("usage"):
            # Kept, not yielded: some servers (vLLM's continuous usage stats) repeat it on every
            # chunk with running totals; only the last one is the bill.
            usage = chunk["usage"]
    if not done and finish is None:
        # A clean close without [DONE] or a finish_reason is a cut answer, not a short one.
        raise ProviderError("upstream_error", "upstream stream ended before completion", 502)
    for call in _drain(calls):
        yield call
    if usage:
        yield Usage(int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0))
    yield Finish(finish or "stop")


def _drain(calls: dict[int, dict]) -> list[ToolCallRequest]:
    out = [ToolCallRequest(c["id"] or f"call_{uuid.uuid4().hex[:12]}", c["name"], "".join(c["args"]) or "{}")
           for _, c in sorted(calls.items())]
    calls.clear()
    return out


def _upstream_message(resp: httpx.Response) -> str:
    try:
        err = resp.json().get("error")
        msg = err.get("message") if isinstance(err, dict) else err
    except Exception:  # any non-JSON / odd body: fall back to the raw text
        msg = None
    return str(msg or resp.text or resp.reason_phrase or "")[:500]


def _status_error(resp: httpx.Response) -> ProviderError:
    status = resp.status_code
    if status == 429:
        err = ProviderError("rate_limited", "upstream rate limit reached", 429, retryable=True)
        try:
            retry_after = float(resp.headers.get("retry-after", ""))
        except ValueError:
            retry_after = None
        if retry_after is not None:
            err.retry_after = retry_after
            err.retryable = retry_after <= MAX_RETRY_AFTER
        return err
    if status in (401, 403):
        # The upstream's text may echo part of our key, so it is not passed on.
        return ProviderError("upstream_auth_failed", f"upstream rejected Relay's credentials ({status})", 502)
    if status in (400, 413, 422):
        return ProviderError("bad_request", _upstream_message(resp), 400)
    if status == 408:
        return ProviderError("upstream_timeout", "upstream timed out", 504, retryable=True)
    return ProviderError("upstream_error", f"upstream error {status}: {_upstream_message(resp)}", 502,
                         retryable=status >= 500)


def _transport_error(exc: httpx.HTTPError, *, before_response: bool) -> ProviderError:
    if isinstance(exc, httpx.ConnectTimeout):
        return ProviderError("upstream_timeout", "timed out connecting to upstream", 504, retryable=True)
    if isinstance(exc, httpx.ConnectError):
        return ProviderError("upstream_unavailable", f"cannot connect to upstream: {exc}", 502, retryable=True)
    if isinstance(exc, httpx.TimeoutException):
        return ProviderError("upstream_timeout", "upstream timed out", 504)
    if isinstance(exc, httpx.RemoteProtocolError) and before_response:
        # Typically a pooled keep-alive connection the server (or a load balancer) had closed;
        # no answer was produced, so one more try is safe.
        return ProviderError("upstream_unavailable", "upstream closed the connection", 502, retryable=True)
    return ProviderError("upstream_error", f"connection to upstream failed: {exc}", 502)
