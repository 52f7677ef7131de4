"""The floors under a gateway's cost: the same proxying with nothing of Relay's guarantees, or
with only the round trips those guarantees cannot do without.

    python bench/_floor_app.py asgi|django|guarded PORT MODEL=UPSTREAM_BASE [MODEL=UPSTREAM_BASE ...]

Both forward POST /v1/chat/completions to the upstream of the body's model with one pooled
aiohttp session (as Relay's provider does) and pass its answer back, streamed or whole, on
uvicorn with uvloop and httptools (relay.serve's server):
  asgi    a bare ASGI app: the floor of any Python gateway on this server;
  django  a Django async view behind Relay's own settings, middleware and ASGI handler (security
          headers, request ids, audit context, metrics, sessions, size limits): no authentication,
          no ledger, no database or Redis write, no audit event, no usage record.
  guarded the django floor plus the trips the guarantees need, each made once and the cheapest way
          (bench/_floor_guarded.py): before the model is asked, one Redis script that finds the key
          and reserves its budget, then the run's row committed (Relay asks no model before its
          opening commits: a refused opening must not leave a paid call unrecorded); after the
          answer, one script that settles and one commit of the usage row, the run's close and a
          hash-chained audit row. No permissions, rate limits, routing, metrics or group commit:
          a floor under Relay, not a gateway (PostgreSQL only; RELAY_FLOOR_KEY is its key).
bench/load.py measures them beside Relay and LiteLLM, so what Relay adds over the django floor is
the price of its guarantees, and the django floor over the asgi one the framework's; one idle
request on the guarded floor is the least those guarantees add in sequence on this machine.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import aiohttp
import uvicorn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # Relay's packages, run as a script
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the bench's own helpers

UPSTREAMS: dict[str, str] = {}
_session: aiohttp.ClientSession | None = None


def _client() -> aiohttp.ClientSession:
    global _session
    if _session is None:
        _session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    return _session


async def _forward(raw: bytes) -> tuple[aiohttp.ClientResponse, bool]:
    body = json.loads(raw)
    response = await _client().post(UPSTREAMS[body["model"]] + "/chat/completions", data=raw,
                                    headers={"Content-Type": "application/json"})
    return response, bool(body.get("stream"))


async def asgi_app(scope, receive, send) -> None:
    if scope["type"] != "http":
        return
    raw = b""
    while True:
        message = await receive()
        raw += message.get("body", b"")
        if not message.get("more_body"):
            break
    upstream, stream = await _forward(raw)
    kind = b"text/event-stream" if stream else b"application/json"
    await send({"type": "http.response.start", "status": upstream.status, "headers": [(b"content-type", kind)]})
    async for chunk in upstream.content.iter_any():
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
    upstream.release()
    await send({"type": "http.response.body", "body": b""})


def django_app(guarded: bool = False):
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "relay.settings")
    import django

    django.setup(set_prefix=False)
    from django.conf import settings
    from django.http import HttpResponse, StreamingHttpResponse
    from django.urls import path
    from django.views.decorators.csrf import csrf_exempt

    from relay.eventloop.handler import RelayASGIHandler

    guard = None
    if guarded:
        from _floor_guarded import Guard

        guard = Guard(os.environ["DATABASE_URL"], os.environ["REDIS_URL"], os.environ["RELAY_FLOOR_KEY"])

    @csrf_exempt
    async def chat_completions(request):
        run = None
        if guard is not None:
            run = await guard.open(request.headers.get("Authorization", ""), request.body)
            if run is None:
                return HttpResponse(b'{"error":"refused"}', status=401, content_type="application/json")
        upstream, stream = await _forward(request.body)
        if not stream:
            body = await upstream.read()
            if run is not None:
                guard.close_later(run, body)
            return HttpResponse(body, status=upstream.status, content_type="application/json")

        async def chunks():
            tail = b""
            async for chunk in upstream.content.iter_any():
                tail = (tail + chunk)[-2048:]  # the usage chunk is the last but one
                yield chunk
            upstream.release()
            if run is not None:
                guard.close_later(run, tail)

        return StreamingHttpResponse(chunks(), status=upstream.status, content_type="text/event-stream")

    global urlpatterns
    urlpatterns = [path("v1/chat/completions", chat_completions)]
    settings.ROOT_URLCONF = __name__
    return RelayASGIHandler()


urlpatterns: list = []


def main() -> None:
    kind, port, *routes = sys.argv[1:]
    UPSTREAMS.update(route.split("=", 1) for route in routes)
    sys.modules.setdefault("_floor_app", sys.modules[__name__])  # the urlconf, when run as a script
    app = asgi_app if kind == "asgi" else django_app(guarded=kind == "guarded")
    if kind != "asgi":
        import gc

        gc.collect()
        gc.freeze()  # as relay.serve does
        gc.set_threshold(10000, 20, 20)
    uvicorn.run(app, host="127.0.0.1", port=int(port), loop="uvloop", http="httptools", lifespan="off",
                access_log=False, log_level="warning", proxy_headers=False)


if __name__ == "__main__":
    main()
