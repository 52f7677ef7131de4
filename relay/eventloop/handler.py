"""Django's ASGI handler, without a new thread per request for the async views.

Django runs each HTTP request in its own asgiref ThreadSensitiveContext: the request's first
thread-sensitive call starts a fresh thread, which is joined when the request ends. Every
request makes such calls (the request_started receivers, then response.close()), so every
model call started and joined a thread. Async views need no thread of their own: their few
thread-sensitive calls go to asgiref's one long-lived sync thread instead. Sync views (the
console, DRF's views) keep a thread per request, as Django intends, so they run side by side.

It also bounds the body it reads (`bounded_body`): Django spools a whole body to a temporary
file before any middleware runs, whatever its size.
"""

from __future__ import annotations

import functools

from asgiref.sync import iscoroutinefunction
from django.core.handlers.asgi import ASGIHandler
from django.urls import Resolver404, resolve

from relay.eventloop.middleware import body_limit

_END_OF_BODY = {"type": "http.request", "body": b"", "more_body": False}


@functools.lru_cache(maxsize=4096)
def serves_async_view(path: str) -> bool:
    try:
        match = resolve(path)
    except Resolver404:
        return False
    return iscoroutinefunction(match.func)


class _BoundedBody:
    """receive() for one request's body that reads no further than `limit` bytes.

    `headers` is the request's own (copied) header list: once the body has ended, or passed the
    limit, its length read so far goes in as Content-Length, before Django builds the request.
    With headers=None the declared length is already over the limit and nothing is read. The
    part past the limit is dropped as it arrives (never stored), while the 413 is answered.
    """

    def __init__(self, receive, limit: int, headers: list | None):
        self.receive, self.limit, self.headers = receive, limit, headers
        self.size, self.ended = 0, False
        self.unread = headers is None

    async def __call__(self):
        if self.unread:
            self.unread, self.ended = False, True
            return _END_OF_BODY
        message = await self.receive()
        while self.ended and message["type"] == "http.request":
            message = await self.receive()
        if self.ended or message["type"] != "http.request":
            return message
        self.size += len(message.get("body", b""))
        if self.size > self.limit or not message.get("more_body", False):
            self.ended = True
            self.headers.append((b"content-length", str(self.size).encode("ascii")))
            if self.size > self.limit:
                return _END_OF_BODY
        return message


def bounded_body(scope, receive):
    """(scope, receive) for an HTTP request, so that Relay never reads more body than it accepts.

    A declared Content-Length over the limit: nothing is read, and RequestSizeLimitMiddleware
    answers 413 from the header. No Content-Length (chunked): reading stops past the limit and the
    request says how much arrived, so the middleware answers 413 the same way (instead of Django's
    RequestDataTooBig: a 400 logged as an ERROR); a chunked body within the limit gets its real
    length, without which DRF reads it as empty.
    """
    declared, content_type = None, b""
    for name, value in scope.get("headers") or ():
        if name == b"content-length":
            declared = value
        elif name == b"content-type":
            content_type = value
    path, root = scope["path"], scope.get("root_path") or ""
    limit = body_limit(content_type.decode("latin1"), path.removeprefix(root) if path.startswith(root) else path)
    if declared is None:
        scope = {**scope, "headers": list(scope.get("headers") or ())}
        return scope, _BoundedBody(receive, limit, scope["headers"])
    if declared.isdigit() and int(declared) > limit:
        return scope, _BoundedBody(receive, limit, None)
    return scope, receive  # the server delivers exactly the declared length


class RelayASGIHandler(ASGIHandler):
    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            scope, receive = bounded_body(scope, receive)
            # Under a script prefix the path would need stripping before resolving: Django's way then.
            if not scope.get("root_path") and serves_async_view(scope["path"]):
                await self.handle(scope, receive, send)
                return
        await super().__call__(scope, receive, send)
