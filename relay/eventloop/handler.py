"""Django's ASGI handler, without a new thread per request for the async views.

Django runs each HTTP request in its own asgiref ThreadSensitiveContext: the request's first
thread-sensitive call starts a fresh thread, which is joined when the request ends. Every
request makes such calls (the request_started receivers, then response.close()), so every
model call started and joined a thread. Async views need no thread of their own: their few
thread-sensitive calls go to asgiref's one long-lived sync thread instead. Sync views (the
console, DRF's views) keep a thread per request, as Django intends, so they run side by side.

For async views the request signals stay on the event loop too (`_handle_on_loop`). Django
sends request_started through sync_to_async and closes the response through it (which sends
request_finished): two hand-offs to that one shared thread per model call, every request queued
behind the others, ~1 ms each on an idle 2-core machine. Their receivers reset what the calling
thread holds (its database connections, caches, query log, urlconf); the loop's thread holds no
database connection (the ORM runs on relay.eventloop.db's pool, which ages its own), its urlconf
is the request's own context, and closing its cache backends (shared by the loop's requests:
relay/eventloop/caches.py, which this handler installs) lets go of nothing (django-redis closes
its pool only when told to), so they run there directly. An async receiver
connected to either signal sends Django's way again.

It also bounds the body it reads (`bounded_body`): Django spools a whole body to a temporary
file before any middleware runs, whatever its size.
"""

from __future__ import annotations

import asyncio
import functools

from asgiref.sync import iscoroutinefunction
from django.core import signals
from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.core.signals import setting_changed
from django.dispatch import receiver
from django.urls import Resolver404, ResolverMatch, resolve, set_script_prefix

from relay.eventloop import later, unfinished
from relay.eventloop.caches import share_per_thread
from relay.eventloop.middleware import body_limit

_END_OF_BODY = {"type": "http.request", "body": b"", "more_body": False}


@functools.lru_cache(maxsize=4096)
def async_view_match(path: str) -> ResolverMatch | None:
    """The URL match of `path` when it names an async view (None otherwise), resolved once per
    path: the handler's choice and Django's own resolve_request both need it, on every model call."""
    try:
        match = resolve(path)
    except Resolver404:
        return None
    return match if iscoroutinefunction(match.func) else None


@receiver(setting_changed)
def _forget_matches(*, setting, **kwargs) -> None:
    if setting == "ROOT_URLCONF":
        async_view_match.cache_clear()


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


def _sync_receivers_only(signal, sender) -> bool:
    return not signal._live_receivers(sender)[1]


class RelayASGIHandler(ASGIHandler):
    def __init__(self):
        super().__init__()
        share_per_thread()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        scope, receive = bounded_body(scope, receive)
        async with unfinished.request_scope():  # what the request left open is closed when it ends
            # Under a script prefix the path would need stripping before resolving: Django's way then.
            if not scope.get("root_path") and async_view_match(scope["path"]) is not None:
                await self._answer_on_loop(scope, receive, send)
            else:
                await super().__call__(scope, receive, send)

    async def _answer_on_loop(self, scope, receive, send):
        """_handle_on_loop, the request marked as not yet answered until its response ends (a stream:
        its first event, agents.api.sse): work held behind answers (a closing's commit) waits for it.
        Only these requests (model calls) are marked: a page or a read of the answer just given
        must not hold back the commit it is about to read. The mark starts once the body has arrived:
        a client sending it slowly, before any authentication, does not hold the commits back."""
        marks = []

        async def receiving():
            message = await receive()
            if not marks and message["type"] == "http.request" and not message.get("more_body"):
                marks.append(later.answering())  # in the request's own context: its stream ends it sooner
            return message

        def answered():
            if marks:
                marks[0]()

        async def sending(message):
            if message["type"] == "http.response.body" and not message.get("more_body"):
                answered()
            await send(message)

        try:
            await self._handle_on_loop(scope, receiving, sending)
        finally:
            answered()

    def resolve_request(self, request):
        """Django's, but an async view's match is the one the handler chose it by (a request with its
        own urlconf resolves Django's way)."""
        match = None if hasattr(request, "urlconf") else async_view_match(request.path_info)
        if match is None:
            return super().resolve_request(request)
        request.resolver_match = match
        return match

    async def _handle_on_loop(self, scope, receive, send):
        """Django's handle() (5.2) for an async view, its request signals sent on the loop (module docstring)."""
        if not (_sync_receivers_only(signals.request_started, self.__class__)
                and _sync_receivers_only(signals.request_finished, self.__class__)):
            await self.handle(scope, receive, send)
            return
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return
        set_script_prefix(get_script_prefix(scope))
        signals.request_started.send(sender=self.__class__, scope=scope)
        request, error_response = self.create_request(scope, body_file)
        if request is None:
            body_file.close()
            await self.send_response(error_response, send)
            error_response.close()
            return
        try:
            response = await self._respond(request, receive, send)
        except AssertionError:
            body_file.close()
            raise
        if response is None:
            signals.request_finished.send(sender=self.__class__)
        else:
            response.close()  # sends request_finished
        body_file.close()

    async def _respond(self, request, receive, send):
        """The response, once sent; None if the client went away first (as in Django's handle())."""

        async def process_request():
            response = await self.run_get_response(request)
            try:
                await self.send_response(response, send)
            except asyncio.CancelledError:
                pass  # the client disconnected during the send
            return response

        # The disconnect listener first: it must not raise errors that would keep the request from
        # being cancelled.
        tasks = [asyncio.create_task(self.listen_for_disconnect(receive)), asyncio.create_task(process_request())]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            if task.done():
                try:
                    task.result()
                except RequestAborted:
                    pass
            else:
                task.cancel()  # views may handle their cancellation
                try:
                    await task
                except asyncio.CancelledError:
                    pass
        try:
            return tasks[1].result()
        except asyncio.CancelledError:
            return None
