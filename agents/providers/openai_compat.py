"""Provider for any OpenAI-compatible endpoint (OpenAI, vLLM, Ollama, llama.cpp, LiteLLM, ...).

Speaks the wire protocol with aiohttp directly rather than through the ``openai`` SDK:

* it is the hot path's own I/O: on this machine aiohttp streams about ten times more completions
  per second of CPU than httpx (which the SDK uses), see bench/README.md;
* cancellation is exact: the response is ours and is closed in a ``finally``, which closes the
  socket when the consuming task is cancelled mid-stream, so the upstream stops generating (and
  billing) at once;
* the hot path pays one ``json.loads`` per chunk, not a pydantic model per chunk.

Event order: TextDelta*, ToolCallRequest* (complete, when finish_reason arrives), Usage?, Finish.
Consumers that may stop early should iterate inside ``contextlib.aclosing(provider.stream(...))``
so the connection closes at once even when they stop between events.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import aiohttp

from agents.tokenizer import count_tokens

from .base import (
    ChatRequest,
    Finish,
    ProviderError,
    ProviderEvent,
    TextDelta,
    ToolCallDelta,
    ToolCallRequest,
    UpstreamBusy,
    Usage,
)

logger = logging.getLogger(__name__)

MAX_WHOLE_BYTES = 8 * 1024 * 1024  # a whole completion's body; far above max_tokens' worth of text
MAX_RETRY_AFTER = 2.0  # seconds; a longer Retry-After is not worth holding a user request for


@dataclass
class _Failed:
    """What is needed of a refused upstream response to describe it."""

    status: int
    headers: dict
    text: str
    reason: str


class OpenAICompatibleProvider:
    reports_connection = True  # stream() calls on_connection once it holds a pool slot (agents.providers.base)

    def __init__(self, name: str, base_url: str, api_key: str | None, *, connect_timeout: float = 5,
                 read_timeout: float = 60, max_retries: int = 2, retry_backoff: float = 0.2,
                 max_connections: int = 1000):
        self.name = name
        self.base_url = base_url.rstrip("/")
        self.max_retries = max_retries
        self.retry_backoff = retry_backoff
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        # sock_read is the longest silence tolerated between two chunks, not the whole answer's time.
        self._timeout = aiohttp.ClientTimeout(total=None, connect=connect_timeout, sock_connect=connect_timeout,
                                              sock_read=read_timeout)
        self._max_connections = max_connections
        self._connect_timeout = connect_timeout
        self._session: aiohttp.ClientSession | None = None
        self._session_loop: asyncio.AbstractEventLoop | None = None
        self._slots: asyncio.Semaphore | None = None  # the session's connections, one per open response

    def _http(self) -> aiohttp.ClientSession:
        # Pooled connections belong to one event loop; tests and management commands may run
        # several loops in one process, so a new loop gets its own session.
        loop = asyncio.get_running_loop()
        if self._session is None or self._session_loop is not loop or self._session.closed:
            connector = aiohttp.TCPConnector(limit=self._max_connections, keepalive_timeout=30)
            self._session = aiohttp.ClientSession(connector=connector, headers=self._headers, timeout=self._timeout,
                                                  raise_for_status=False)
            self._session_loop = loop
            self._slots = asyncio.Semaphore(self._max_connections)
        return self._session

    async def _take_slot(self) -> asyncio.Semaphore:
        """One of the pool's connections, to give back (`.release()`) when the response is done; or
        UpstreamBusy.

        aiohttp would wait for a free connection inside its connect timeout and then fail as if
        the upstream had not answered: a healthy deployment would be counted as failing (and
        cooled down) because this instance is busy. Waiting here tells the two apart.
        """
        self._http()
        slots = self._slots
        if not slots.locked():
            await slots.acquire()  # free: no timer to arm
            return slots
        try:
            async with asyncio.timeout(self._connect_timeout):
                await slots.acquire()
        except TimeoutError:
            raise UpstreamBusy(f"this instance has {self._max_connections} requests open to {self.name}; "
                               f"none ended within {self._connect_timeout:g} s") from None
        return slots

    async def aclose(self) -> None:
        if self._session is not None and self._session_loop is asyncio.get_running_loop():
            await self._session.close()
        self._session = self._session_loop = None

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

    async def _open(self, method: str, path: str, body: dict | None = None) -> aiohttp.ClientResponse:
        """Send with retries; return an open (streaming) response with status < 400.

        Only failures that come before any answer are retried: nothing has reached the caller yet.
        """
        session = self._http()
        for attempt in range(self.max_retries + 1):
            try:
                resp = await session.request(method, self.base_url + path, json=body)
            except (TimeoutError, aiohttp.ClientError) as exc:
                err = _transport_error(exc, before_response=True)
            else:
                if resp.status < 400:
                    return resp
                try:
                    text = await resp.text(errors="replace")
                except (TimeoutError, aiohttp.ClientError):
                    text = ""  # the status alone is enough to map the error
                finally:
                    resp.release()
                err = _status_error(_Failed(resp.status, dict(resp.headers), text, resp.reason or ""))
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

    async def stream(self, request: ChatRequest, *,
                     on_connection: Callable[[], None] | None = None) -> AsyncIterator[ProviderEvent]:
        slots = await self._take_slot()
        try:
            if on_connection is not None:
                on_connection()
            resp = await self._open("POST", "/chat/completions", self._body(request))
        except BaseException:
            slots.release()
            raise
        # Held apart from the response: aiohttp may detach the connection from a response that
        # stopped early, and only the socket itself can then still be hung up.
        transport = resp.connection.transport if resp.connection is not None else None
        finished = False
        # A server that ignores `stream: true` answers with one chat.completion: read it as such.
        parse = _parse_whole if resp.content_type == "application/json" else _parse_stream
        try:
            async for event in parse(resp):
                yield event
            finished = True
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _transport_error(exc, before_response=False) from exc
        finally:
            try:
                if finished:
                    resp.release()  # read to the end: the connection goes back to the pool
                else:  # stopped early (cancelled, budget, error): hang up so the upstream stops
                    resp.close()
                    if transport is not None:
                        transport.abort()
                        await asyncio.sleep(0)  # the loop closes the socket on its next turn: take it now
            finally:
                slots.release()  # after the connection is back in aiohttp's pool, or gone

    async def list_models(self) -> list[str]:
        slots = await self._take_slot()
        try:
            resp = await self._open("GET", "/models")
        except BaseException:
            slots.release()
            raise
        try:
            data = json.loads(await resp.read())
            return [m["id"] for m in data["data"]]
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _transport_error(exc, before_response=False) from exc
        except (ValueError, KeyError, TypeError) as exc:
            raise ProviderError("upstream_error", "malformed model list from upstream", 502) from exc
        finally:
            resp.release()
            slots.release()

    def __repr__(self) -> str:
        return f"OpenAICompatibleProvider({self.name!r}, {self.base_url!r})"


async def _parse_stream(resp: aiohttp.ClientResponse) -> AsyncIterator[ProviderEvent]:
    calls: dict[int, dict] = {}
    finish: str | None = None
    usage: dict | None = None
    done = False
    async for raw in resp.content:  # one line at a time
        line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
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
            logger.warning("upstream error chunk: %.500s", err.get("message") if isinstance(err, dict) else err)
            raise ProviderError("upstream_error", "the upstream reported an error mid-answer", 502)
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
                if fn.get("name") or fn.get("arguments"):
                    yield ToolCallDelta()
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


async def _parse_whole(resp: aiohttp.ClientResponse) -> AsyncIterator[ProviderEvent]:
    """One chat.completion body, as the events a stream of it would give: its text in one TextDelta that
    counts as its tokens (the runner passes it on whole when the budget and max_tokens allow them all,
    and splits it only to stop inside it)."""
    raw = await _read_bounded(resp)
    try:
        body = json.loads(raw)
        if isinstance(body, dict) and body.get("error"):
            err = body["error"]
            logger.warning("upstream error body: %.500s", err.get("message") if isinstance(err, dict) else err)
            raise ProviderError("upstream_error", "the upstream reported an error", 502)
        choice = body["choices"][0]
        message = choice.get("message") or {}
        content = message.get("content") or ""
        calls, usage = message.get("tool_calls") or [], body.get("usage") or {}
        if not isinstance(content, str) or not isinstance(calls, list) or not isinstance(usage, dict):
            raise TypeError("completion")
        counted = (int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)) if usage else None
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        raise ProviderError("upstream_error", "malformed completion from upstream", 502) from None
    if content:
        yield TextDelta(content, tokens=count_tokens(content))
    for call in calls:
        if not isinstance(call, dict):
            raise ProviderError("upstream_error", "malformed completion from upstream", 502)
        function = call.get("function") if isinstance(call.get("function"), dict) else {}
        yield ToolCallRequest(call_id=call.get("id") or f"call_{uuid.uuid4().hex[:24]}",
                              name=str(function.get("name") or ""), arguments=str(function.get("arguments") or ""))
    if counted:
        yield Usage(*counted)
    yield Finish(str(choice.get("finish_reason") or "stop"))


async def _read_bounded(resp: aiohttp.ClientResponse) -> bytes:
    """The body, refused past MAX_WHOLE_BYTES: an upstream's answer is bounded like a client's request."""
    parts, size = [], 0
    while chunk := await resp.content.read(65536):
        size += len(chunk)
        if size > MAX_WHOLE_BYTES:
            raise ProviderError("upstream_error", "completion from upstream too large", 502)
        parts.append(chunk)
    return b"".join(parts)


def _drain(calls: dict[int, dict]) -> list[ToolCallRequest]:
    out = [ToolCallRequest(c["id"] or f"call_{uuid.uuid4().hex[:12]}", c["name"], "".join(c["args"]) or "{}")
           for _, c in sorted(calls.items())]
    calls.clear()
    return out


def _upstream_message(resp: _Failed) -> str:
    try:
        err = json.loads(resp.text).get("error")
        msg = err.get("message") if isinstance(err, dict) else err
    except Exception:  # any non-JSON / odd body: fall back to the raw text
        msg = None
    return str(msg or resp.text or resp.reason or "")[:500]


def _status_error(resp: _Failed) -> ProviderError:
    err = _status_error_of(resp)
    retry_after = _retry_after(resp.headers) if resp.status in (429, 503) else None
    if retry_after is not None:
        # The router cools the deployment down for this long; a retry here waits it out only if short.
        err.retry_after = retry_after
        err.retryable = retry_after <= MAX_RETRY_AFTER
    return err


def _status_error_of(resp: _Failed) -> ProviderError:
    status = resp.status
    if status == 429:
        return ProviderError("rate_limited", "upstream rate limit reached", 429, retryable=True)
    if status in (401, 403):
        # The upstream's text may echo part of our key, so it is not passed on.
        return ProviderError("upstream_auth_failed", f"upstream rejected Relay's credentials ({status})", 502)
    if status in (400, 413, 422):
        message = _upstream_message(resp)
        if _is_context_window(resp.text, message):
            return ProviderError("context_window_exceeded", message, 400)
        return ProviderError("bad_request", message, 400)
    if status == 408:
        return ProviderError("upstream_timeout", "upstream timed out", 504, retryable=True)
    # Its text stays in the log: a proxy's error page can name hosts, ports and paths behind it.
    logger.warning("upstream error %s: %.500s", status, _upstream_message(resp))
    return ProviderError("upstream_error", f"upstream error {status}", 502, retryable=status >= 500)


def _retry_after(headers: dict) -> float | None:
    """Retry-After in seconds (the delta form; an HTTP date is rare from model servers and ignored)."""
    try:
        seconds = float({k.lower(): v for k, v in headers.items()}.get("retry-after", ""))
    except ValueError:
        return None
    return seconds if 0 <= seconds < 86400 else None


# OpenAI's code, and the wording of vLLM, llama.cpp, Ollama and others for a prompt over the window.
_CONTEXT_WINDOW = ("context_length_exceeded", "maximum context length", "context window", "context length",
                   "too many tokens", "prompt is too long")


def _is_context_window(body: str, message: str) -> bool:
    text = f"{body[:2000]} {message}".lower()
    return any(marker in text for marker in _CONTEXT_WINDOW)


def _transport_error(exc: BaseException, *, before_response: bool) -> ProviderError:
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return ProviderError("upstream_timeout", "timed out connecting to upstream", 504, retryable=True)
    if isinstance(exc, aiohttp.ClientConnectorError):
        logger.warning("cannot connect to upstream: %s", exc)  # the address stays here, not in the answer
        return ProviderError("upstream_unavailable", "cannot connect to upstream", 502, retryable=True)
    if isinstance(exc, (asyncio.TimeoutError, aiohttp.ServerTimeoutError)):
        return ProviderError("upstream_timeout", "upstream timed out", 504)
    if isinstance(exc, aiohttp.ServerDisconnectedError) and before_response:
        # Typically a pooled keep-alive connection the server (or a load balancer) had closed;
        # no answer was produced, so one more try is safe.
        return ProviderError("upstream_unavailable", "upstream closed the connection", 502, retryable=True)
    logger.warning("connection to upstream failed: %s", exc)
    return ProviderError("upstream_error", "connection to upstream failed", 502)
