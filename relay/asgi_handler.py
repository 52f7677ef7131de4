"""Django's ASGI handler, without a new thread per request for the async views.

Django runs each HTTP request in its own asgiref ThreadSensitiveContext: the request's first
thread-sensitive call starts a fresh thread, which is joined when the request ends. Every
request makes such calls (the request_started receivers, then response.close()), so every
model call started and joined a thread. Async views need no thread of their own: their few
thread-sensitive calls go to asgiref's one long-lived sync thread instead. Sync views (the
console, DRF's views) keep a thread per request, as Django intends, so they run side by side.
"""

from __future__ import annotations

import functools

from asgiref.sync import iscoroutinefunction
from django.core.handlers.asgi import ASGIHandler
from django.urls import Resolver404, resolve


@functools.lru_cache(maxsize=4096)
def serves_async_view(path: str) -> bool:
    try:
        match = resolve(path)
    except Resolver404:
        return False
    return iscoroutinefunction(match.func)


class RelayASGIHandler(ASGIHandler):
    async def __call__(self, scope, receive, send):
        # Under a script prefix the path would need stripping before resolving: Django's way then.
        if scope["type"] == "http" and not scope.get("root_path") and serves_async_view(scope["path"]):
            await self.handle(scope, receive, send)
            return
        await super().__call__(scope, receive, send)
