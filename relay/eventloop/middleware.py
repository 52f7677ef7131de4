"""The one base of Relay's middleware, and the request size limit that runs before anything reads the body."""

import functools

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from django.urls import Resolver404, resolve

from relay.api.envelope import error_response


class DualModeMiddleware:
    """Base for middleware that stays on the event loop under ASGI and still works under WSGI.

    A sync-only middleware would make Django run every request through its single shared sync
    thread (docs/design.md section 11). Subclasses write `handle(request)` for the sync chain and
    `__acall__(request)` for the async one; Django's process_view / process_exception hooks, where
    a subclass has them, are called by Django as for any middleware.
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response):
        self.get_response = get_response
        self._async = iscoroutinefunction(get_response)
        if self._async:
            markcoroutinefunction(self)

    def __call__(self, request):
        if self._async:
            return self.__acall__(request)
        return self.handle(request)

    def handle(self, request):
        raise NotImplementedError

    async def __acall__(self, request):
        raise NotImplementedError


# A view that takes bodies of upload size whatever their type sets `body_limit_setting` to this
# (relay.api.async_views.api_endpoint(upload_sized=True): JSON that carries images inline).
UPLOAD_SIZED = "RELAY_MAX_UPLOAD_BYTES"


@functools.lru_cache(maxsize=4096)
def _view_limit_setting(path: str) -> str | None:
    try:
        match = resolve(path)
    except Resolver404:
        return None
    return getattr(match.func, "body_limit_setting", None)


def body_limit(content_type: str, path: str = "") -> int:
    """Multipart uploads, and any body of a view that declares it, get RELAY_MAX_UPLOAD_BYTES;
    every other body RELAY_MAX_BODY_BYTES."""
    if content_type.startswith("multipart/") or (path and _view_limit_setting(path) == UPLOAD_SIZED):
        return settings.RELAY_MAX_UPLOAD_BYTES
    return settings.RELAY_MAX_BODY_BYTES


class RequestSizeLimitMiddleware(DualModeMiddleware):
    """Refuse bodies over the limit with 413 and the error envelope, before parsing.

    Under ASGI a body sent without Content-Length (chunked) carries the length read so far by
    the time it gets here (relay.eventloop.handler.bounded_body), so it is refused the same way.
    """

    def _refusal(self, request):
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            return error_response(400, "bad_request", "Content-Length is not a number.")
        limit = body_limit(request.META.get("CONTENT_TYPE", ""), request.path_info)
        if length > limit:
            return error_response(413, "payload_too_large", f"The request body is larger than {limit} bytes.")
        return None

    def handle(self, request):
        return self._refusal(request) or self.get_response(request)

    async def __acall__(self, request):
        return self._refusal(request) or await self.get_response(request)
