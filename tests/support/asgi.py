"""One request through Relay's own ASGI handler, in process: the messages it sends."""

from __future__ import annotations

import asyncio


async def asgi_request(method: str, path: str, headers: dict[str, str] | None = None, query: str = "",
                       keep_body: bool = True) -> list[dict]:
    """What Relay's ASGI handler sends for one bodiless request whose client stays connected
    (`keep_body` False: the body messages kept as one, their count in `messages` and their bytes in
    `size`, so that what the client holds does not grow with the response)."""
    from relay.eventloop.handler import RelayASGIHandler

    arriving, sent = [{"type": "http.request", "body": b"", "more_body": False}], []

    async def receive():
        if arriving:
            return arriving.pop()
        await asyncio.Event().wait()  # the client stays: the handler's disconnect listener waits

    async def send(message):
        if keep_body or message["type"] != "http.response.body":
            sent.append(message)
            return
        if sent[-1]["type"] != "http.response.body":
            sent.append({"type": "http.response.body", "messages": 0, "size": 0})
        sent[-1]["messages"] += 1
        sent[-1]["size"] += len(message.get("body", b""))

    raw_headers = [(b"host", b"testserver"), *((k.lower().encode(), v.encode()) for k, v in (headers or {}).items())]
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": query.encode(), "root_path": "",
             "headers": raw_headers, "client": ("127.0.0.1", 40000), "server": ("testserver", 80)}
    await RelayASGIHandler()(scope, receive, send)
    return sent


def body_of(sent: list[dict]) -> bytes:
    return b"".join(message.get("body", b"") for message in sent if message["type"] == "http.response.body")
