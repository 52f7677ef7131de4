"""A fake OpenAI-compatible LLM server for tests and benchmarks.

Speaks the real wire protocol (``POST /v1/chat/completions`` streamed and not, ``GET /v1/models``,
OpenAI's error JSON), so the official SDK and Relay's provider can be tested against it, and its
timing and failures are scripted by :class:`FakeUpstreamConfig`:

* on the server object, for every following request: ``server.config.ttft = 0.2`` or
  ``server.configure(ttft=0.2, tps=50)``; ``server.fail_next(2, status=429)``;
* per request, by a magic in the last user message: ``[[fake: ttft=0.2 tps=50 drop_after=3]]``.
  Keys are config field names with scalar values, plus ``error=S`` (fail this request with S).
  The magic is removed from the echoed prompt;
* from another process (benchmarks run the fake as its own process): ``POST /_control`` with a JSON
  object of config fields (``{"fail_all": true, "fail_status": 429, "retry_after": 2}``) changes
  them and marks the moment; ``GET /_control?since=T`` counts the completions that arrived from
  ``T`` on (``time.monotonic()``, one clock for every process on the machine) and tells when the
  first successful one arrived after the last change (``first_ok_after_change``), and for each
  stream, when it arrived and when its first token left (``streams``).

Raw ASGI (no framework) so the fake adds no dependency beyond uvicorn and costs little per token
in benchmarks.  ``python -m tests.support.fake_upstream --port 8901 --ttft 0.05 --tps 200``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field

import uvicorn

from tests.support.fake_answers import MAGIC_RE, _calls_within, _parse_magic, _text_of, _tokens

ERROR_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 403: "permission_error",
               404: "invalid_request_error", 429: "requests"}
ERROR_CODES = {401: "invalid_api_key", 404: "model_not_found", 429: "rate_limit_exceeded"}


@dataclass
class FakeUpstreamConfig:
    ttft: float = 0.0                      # seconds from request to the first content chunk
    tps: float = 0.0                       # tokens per second after the first; 0 = no delay
    reply: str | None = None               # fixed reply; None = "Echo: <last user message>"
    tokens: int | None = None              # pad/cut the reply to exactly this many word tokens
    chunks: list[str] | None = None        # stream exactly these content pieces (a tag split mid-name)
    usage: bool = True                     # False: never report usage (some upstreams don't)
    prompt_tokens: int | None = None       # None = 3 + per message (4 + words)
    tool_calls: list[dict] | None = None   # [{"name", "arguments": dict|str, "id"?}] when tools sent
    tool_arg_chunk: int = 7                # characters per streamed tool-argument piece
    fail_next: int = 0                     # fail this many requests with fail_status, then succeed
    fail_status: int = 500
    fail_message: str | None = None        # the error message of those failures (default "Fake failure S.")
    fail_all: bool = False                 # fail every request with fail_status until turned off
    retry_after: float | None = None       # Retry-After header on failures
    garbage_after: int | None = None       # send a non-JSON data line after K tokens
    stall_after: int | None = None         # after K tokens stop sending for `stall` seconds
    stall: float = 0.0
    drop_after: int | None = None          # close the connection after K tokens, no [DONE]
    api_key: str | None = None             # require "Authorization: Bearer <api_key>"
    ignore_stream: bool = False            # answer `stream: true` with one chat.completion, as some servers do
    models: list[str] = field(default_factory=lambda: ["fake-mini", "fake-large"])


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: dict | None
    time: float                            # time.monotonic() at arrival, comparable across threads
    status: int = 0
    stream: bool = False
    completed: bool = False                # the whole response (and [DONE]) was sent
    client_disconnected: bool | None = None  # for streams: client left before the end
    disconnected_at: float | None = None   # time.monotonic() when the disconnect was observed
    first_token_at: float | None = None    # time.monotonic() when a stream's first token was sent


class _DeliberateDrop(Exception):
    """Raised to make uvicorn abort the connection mid-body (no clean chunked end)."""


class _QuietDrops(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], _DeliberateDrop))


logging.getLogger("uvicorn.error").addFilter(_QuietDrops())


class FakeUpstreamApp:
    """The ASGI app; holds config and the request record shared with the test thread."""

    def __init__(self, config: FakeUpstreamConfig | None = None):
        self.config = config or FakeUpstreamConfig()
        self.requests: list[RecordedRequest] = []
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self.changed_at = time.monotonic()  # the last /_control change (a bench's "healed at")

    # -- test-thread API --------------------------------------------------------------------
    def configure(self, **changes) -> None:
        for key, value in changes.items():
            if not hasattr(self.config, key):
                raise AttributeError(f"FakeUpstreamConfig has no field {key!r}")
            setattr(self.config, key, value)

    def fail_next(self, n: int, status: int = 500) -> None:
        with self._lock:
            self.config.fail_next, self.config.fail_status = n, status

    def reset(self, config: FakeUpstreamConfig | None = None) -> None:
        with self._lock:
            self.requests.clear()
            self.config = config or FakeUpstreamConfig()

    def wait_for(self, predicate, timeout: float) -> bool:
        """Block (no asyncio) until predicate(requests) is true; False on timeout."""
        with self._changed:
            return self._changed.wait_for(lambda: predicate(self.requests), timeout)

    def wait_for_disconnect(self, timeout: float = 1.0) -> RecordedRequest | None:
        hit = self.wait_for(lambda reqs: any(r.client_disconnected for r in reqs), timeout)
        return next((r for r in self.requests if r.client_disconnected), None) if hit else None

    def wait_for_requests(self, n: int, timeout: float = 1.0) -> bool:
        return self.wait_for(lambda reqs: len(reqs) >= n, timeout)

    def _update(self, rec: RecordedRequest, **fields) -> None:
        with self._changed:
            for k, v in fields.items():
                setattr(rec, k, v)
            self._changed.notify_all()

    # -- ASGI --------------------------------------------------------------------------------
    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return
        raw = b""
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            raw += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        rec = RecordedRequest(scope["method"], scope["path"], headers, body, time.monotonic())
        with self._changed:
            self.requests.append(rec)
            self._changed.notify_all()

        path = scope["path"].rstrip("/")
        if path == "/_control":
            return await self._control(send, rec, scope, body)
        cfg = self.config
        if cfg.api_key and headers.get("authorization") != f"Bearer {cfg.api_key}":
            return await self._error(send, rec, 401, "Incorrect API key provided.")
        if path == "/v1/models":
            if scope["method"] != "GET":
                return await self._error(send, rec, 405, "Method not allowed.")
            data = [{"id": m, "object": "model", "created": 0, "owned_by": "fake"} for m in cfg.models]
            return await self._json(send, rec, 200, {"object": "list", "data": data})
        if path != "/v1/chat/completions":
            return await self._error(send, rec, 404, f"Unknown path {scope['path']}.")
        if scope["method"] != "POST":
            return await self._error(send, rec, 405, "Method not allowed.")
        if not isinstance(body, dict):
            return await self._error(send, rec, 400, "We could not parse the JSON body of your request.")
        for key in ("model", "messages"):
            if not body.get(key):
                return await self._error(send, rec, 400, f"Missing required parameter: '{key}'.", key)
        await self._completion(body, send, receive, rec)

    async def _completion(self, body, send, receive, rec):
        messages = body["messages"]
        user_at = next((i for i in range(len(messages) - 1, -1, -1) if messages[i].get("role") == "user"), -1)
        last_user = messages[user_at] if user_at >= 0 else {}
        magic = _parse_magic(_text_of(last_user.get("content")))
        forced = magic.pop("error", None)
        cfg = dataclasses.replace(self.config, **{k: v for k, v in magic.items()
                                                  if k in FakeUpstreamConfig.__dataclass_fields__})
        with self._lock:
            if forced is None and self.config.fail_next > 0:
                self.config.fail_next -= 1
                forced = self.config.fail_status
            elif forced is None and self.config.fail_all:
                forced = self.config.fail_status
        if cfg.ttft and forced:  # a slow failure is as real as a slow answer
            await asyncio.sleep(cfg.ttft)
        if forced:
            return await self._error(send, rec, int(forced), cfg.fail_message or f"Fake failure {forced}.",
                                     retry_after=cfg.retry_after)

        plan = self._plan(body, messages, user_at, cfg)
        if body.get("stream") and not cfg.ignore_stream:
            rec.stream = True
            return await self._stream(body, plan, cfg, send, receive, rec)
        await asyncio.sleep(cfg.ttft + (max(0, len(plan["tokens"]) - 1) / cfg.tps if cfg.tps else 0))
        msg = {"role": "assistant", "content": "".join(plan["tokens"]) if not plan["calls"] else None}
        if plan["calls"]:
            msg["tool_calls"] = [{"id": c["id"], "type": "function",
                                  "function": {"name": c["name"], "arguments": c["arguments"]}}
                                 for c in plan["calls"]]
        out = self._envelope(plan, "chat.completion")
        out["choices"] = [{"index": 0, "message": msg, "logprobs": None, "finish_reason": plan["finish"]}]
        out["usage"] = plan["usage"]
        await self._json(send, rec, 200, out)

    def _plan(self, body, messages, user_at, cfg) -> dict:
        """Decide the whole answer up front: deterministic from request and config."""
        last_user = messages[user_at] if user_at >= 0 else {}
        after_user = messages[user_at + 1:]
        tool_outputs = [_text_of(m.get("content")) for m in after_user if m.get("role") == "tool"]
        calls = []
        if body.get("tools") and cfg.tool_calls and not tool_outputs:
            for spec in cfg.tool_calls:
                args = spec.get("arguments", {})
                calls.append({"id": spec.get("id") or f"call_{uuid.uuid4().hex[:12]}", "name": spec["name"],
                              "arguments": args if isinstance(args, str) else json.dumps(args)})
        prompt = MAGIC_RE.sub("", _text_of(last_user.get("content"))).strip()
        if tool_outputs:
            text = "Tool result: " + "; ".join(tool_outputs)
        else:
            text = cfg.reply if cfg.reply is not None else f"Echo: {prompt}".strip()
        if cfg.tokens is not None:
            words = text.split() or ["token"]
            text = " ".join(words[i % len(words)] for i in range(cfg.tokens))
        tokens = [] if calls else (list(cfg.chunks) if cfg.chunks is not None and not tool_outputs else _tokens(text))
        finish = "tool_calls" if calls else "stop"
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        if limit and len(tokens) > limit:
            tokens, finish = tokens[:limit], "length"
        if limit and calls:  # a model's tool-call arguments are output too: cut where max_tokens ends
            calls, cut = _calls_within(calls, limit)
            finish = "length" if cut else finish
        if cfg.prompt_tokens is not None:
            prompt_tokens = cfg.prompt_tokens
        else:
            prompt_tokens = 3 + sum(4 + len(_text_of(m.get("content")).split()) for m in messages)
        completion = len(tokens) + sum(len(_tokens(c["name"] + " " + c["arguments"])) for c in calls)
        return {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "model": body["model"], "tokens": tokens,
                "calls": calls, "finish": finish,
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
                          "total_tokens": prompt_tokens + completion}}

    @staticmethod
    def _envelope(plan, obj):
        return {"id": plan["id"], "object": obj, "created": int(time.time()), "model": plan["model"],
                "system_fingerprint": "fp_fake"}

    async def _stream(self, body, plan, cfg, send, receive, rec):
        want_usage = cfg.usage and bool((body.get("stream_options") or {}).get("include_usage"))
        base = self._envelope(plan, "chat.completion.chunk")
        if want_usage:
            base["usage"] = None  # OpenAI sends a null usage on every chunk when usage is on

        def chunk(delta, finish=None):
            c = dict(base, choices=[{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}])
            return b"data: " + json.dumps(c).encode() + b"\n\n"

        body_pieces = [chunk({"content": t}) for t in plan["tokens"]]
        for i, call in enumerate(plan["calls"]):
            body_pieces.append(chunk({"tool_calls": [{"index": i, "id": call["id"], "type": "function",
                                                      "function": {"name": call["name"], "arguments": ""}}]}))
            args, n = call["arguments"], max(1, cfg.tool_arg_chunk)
            body_pieces += [chunk({"tool_calls": [{"index": i, "function": {"arguments": args[j:j + n]}}]})
                            for j in range(0, len(args), n)]
        tail = chunk({}, plan["finish"])
        if want_usage:
            tail += b"data: " + json.dumps(dict(base, choices=[], usage=plan["usage"])).encode() + b"\n\n"
        tail += b"data: [DONE]\n\n"

        finishing = False
        gone = asyncio.Event()

        async def watch_disconnect():
            # uvicorn also answers receive() with http.disconnect once the response is complete,
            # so only a disconnect seen before our last send means the client left early.
            while (await receive())["type"] != "http.disconnect":
                pass
            if not finishing:
                self._update(rec, client_disconnected=True, disconnected_at=time.monotonic())
                gone.set()

        async def pause(seconds):
            if seconds > 0:
                try:
                    await asyncio.wait_for(gone.wait(), seconds)
                except TimeoutError:
                    pass

        async def emit(data: bytes, more: bool = True):
            await send({"type": "http.response.body", "body": data, "more_body": more})

        async def faults(sent: int):
            """Scripted misbehaviour once `sent` tokens have gone out."""
            if cfg.garbage_after == sent:
                await emit(b"data: {not json at all\n\n")
            if cfg.stall_after == sent:
                await pause(cfg.stall)
            if cfg.drop_after == sent:
                raise _DeliberateDrop()

        watcher = asyncio.create_task(watch_disconnect())
        try:
            rec.status = 200
            headers = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await pause(cfg.ttft)
            delay = 1.0 / cfg.tps if cfg.tps else 0.0
            # OpenAI opens with an empty content delta carrying the role; the first token follows at once.
            await emit(chunk({"role": "assistant", "content": ""}))
            for sent, data in enumerate(body_pieces):
                if sent:
                    await pause(delay)
                await faults(sent)
                if gone.is_set():
                    return
                await emit(data)
                if not sent:
                    rec.first_token_at = time.monotonic()
            await faults(len(body_pieces))
            if gone.is_set():
                return
            finishing = True
            await emit(tail, more=False)
            self._update(rec, completed=True, client_disconnected=False)
        finally:
            watcher.cancel()

    async def _control(self, send, rec, scope, body):
        """Change the config from outside the process, or report the completions served (see the top)."""
        if scope["method"] == "POST":
            unknown = sorted(set(body or {}) - set(FakeUpstreamConfig.__dataclass_fields__)) if isinstance(
                body, dict) else ["<not a JSON object>"]
            if unknown:
                return await self._error(send, rec, 400, f"Unknown config fields: {', '.join(unknown)}.")
            with self._lock:
                for key, value in body.items():
                    setattr(self.config, key, value)
                self.changed_at = time.monotonic()
        elif scope["method"] != "GET":
            return await self._error(send, rec, 405, "Method not allowed.")
        query = dict(pair.partition("=")[::2] for pair in scope.get("query_string", b"").decode().split("&") if pair)
        try:
            since = float(query.get("since", 0))
        except ValueError:
            return await self._error(send, rec, 400, "since must be a number.")
        # The streams' times only in a report: a change's answer stays small however many were served.
        await self._json(send, rec, 200, self.stats(since, streams=scope["method"] == "GET"))

    def stats(self, since: float = 0.0, streams: bool = False) -> dict:
        with self._lock:
            done = [r for r in self.requests if r.path.rstrip("/") == "/v1/chat/completions" and r.time >= since]
            ok = [r.time for r in done if r.status == 200 and r.completed]
            after_change = [t for t in ok if t >= self.changed_at]
            report = {"now": time.monotonic(), "changed_at": self.changed_at, "requests": len(done), "ok": len(ok),
                      "failed": sum(1 for r in done if r.status >= 400),
                      "first_ok_after_change": min(after_change) if after_change else None,
                      "config": dataclasses.asdict(self.config)}
            if streams:  # [arrival, first token sent] of each stream: what a gateway in front adds before and after
                report["streams"] = [[r.time, r.first_token_at] for r in done if r.first_token_at is not None]
            return report

    async def _json(self, send, rec, status, payload, extra_headers=()):
        data = json.dumps(payload).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                   *extra_headers]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": data})
        self._update(rec, status=status, completed=True)

    async def _error(self, send, rec, status, message, param=None, retry_after=None):
        err = {"message": message, "type": ERROR_TYPES.get(status, "server_error" if status >= 500 else
                                                              "invalid_request_error"),
               "param": param, "code": ERROR_CODES.get(status)}
        extra = [(b"retry-after", str(retry_after).encode())] if retry_after is not None else []
        await self._json(send, rec, status, {"error": err}, extra)


class FakeUpstream:
    """Runs a FakeUpstreamApp under uvicorn in a background thread on 127.0.0.1.

    ``with FakeUpstream(FakeUpstreamConfig(tps=100)) as server: OpenAI(base_url=server.base_url)``
    Attribute access not defined here (config, requests, configure, fail_next, reset,
    wait_for_disconnect, wait_for_requests, wait_for) goes to the app.
    """

    def __init__(self, config: FakeUpstreamConfig | None = None, host: str = "127.0.0.1", port: int = 0):
        self.app = FakeUpstreamApp(config)
        self.host, self.port = host, port
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def __getattr__(self, name):
        return getattr(self.__dict__["app"], name)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def start(self, timeout: float = 5.0) -> FakeUpstream:
        # Binding ourselves gives the real port before uvicorn starts, and port 0 never collides.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(self.app, lifespan="off", log_level="warning", access_log=False,
                                loop=_best_loop(), timeout_graceful_shutdown=1)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]},
                                        name=f"fake-upstream-{self.port}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:  # uvicorn exposes no event, so poll its flag briefly
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("fake upstream failed to start")
            time.sleep(0.002)
        return self

    def stop(self) -> None:
        if self._server is not None:
            # force_exit: don't wait for open streams (stalls) to end politely.
            self._server.should_exit = self._server.force_exit = True
            self._thread.join(5)
            self._server = None

    def __enter__(self) -> FakeUpstream:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _best_loop() -> str:
    try:
        import uvloop  # noqa: F401
        return "uvloop"
    except ImportError:
        return "asyncio"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Fake OpenAI-compatible upstream for benchmarks.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8901)
    p.add_argument("--ttft", type=float, default=0.0, help="seconds to first token")
    p.add_argument("--tps", type=float, default=0.0, help="tokens per second (0 = no delay)")
    p.add_argument("--tokens", type=int, default=None, help="reply length in tokens")
    p.add_argument("--reply", default=None, help="fixed reply text (default: echo the prompt)")
    p.add_argument("--no-usage", action="store_true", help="never report usage")
    p.add_argument("--api-key", default=None, help="require this bearer key")
    p.add_argument("--fail-all", action="store_true", help="fail every request (until POST /_control heals it)")
    p.add_argument("--fail-status", type=int, default=500, help="the status of failures")
    p.add_argument("--retry-after", type=int, default=None, help="Retry-After seconds on failures")
    a = p.parse_args(argv)
    cfg = FakeUpstreamConfig(ttft=a.ttft, tps=a.tps, tokens=a.tokens, reply=a.reply, usage=not a.no_usage,
                             api_key=a.api_key, fail_all=a.fail_all, fail_status=a.fail_status,
                             retry_after=a.retry_after)
    print(f"fake upstream on http://{a.host}:{a.port}/v1", flush=True)
    uvicorn.run(FakeUpstreamApp(cfg), host=a.host, port=a.port, lifespan="off", log_level="warning",
                access_log=False, loop=_best_loop())


if __name__ == "__main__":
    main()

