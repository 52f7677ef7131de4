"""Django's own middleware, with its hooks run on the event loop instead of a thread.

Under ASGI, Django's MiddlewareMixin calls every process_request and process_response through
sync_to_async(thread_sensitive=True), and every process_view the same way: all on one shared
thread. With the seven middleware of the stack, that was 13 hand-offs to a single thread per
request, each costing a context switch and queueing behind every other request's, the largest
cost of a model call after the model. The hooks of these classes compute and set headers or
cookies; where one would reach a store (a session that must be saved, messages to write into
it), that call alone still goes to the sync thread, as Django would have done.
"""

from __future__ import annotations

from asgiref.sync import markcoroutinefunction, sync_to_async
from django.conf import settings
from django.contrib.auth import middleware as auth
from django.contrib.messages import middleware as messages
from django.contrib.messages.storage import default_storage
from django.contrib.sessions import middleware as sessions
from django.middleware import clickjacking, common, csrf, security
from django.utils.functional import SimpleLazyObject, empty


class _InlineHooks:
    """process_request / process_response called directly in the async chain."""

    async def __acall__(self, request):
        response = None
        if hasattr(self, "process_request"):
            response = self.process_request(request)
        response = response or await self.get_response(request)
        if hasattr(self, "process_response"):
            if self._response_needs_thread(request, response):
                return await sync_to_async(self.process_response, thread_sensitive=True)(request, response)
            response = self.process_response(request, response)
        return response

    def _response_needs_thread(self, request, response) -> bool:
        return False


class SecurityMiddleware(_InlineHooks, security.SecurityMiddleware):
    pass


class CommonMiddleware(_InlineHooks, common.CommonMiddleware):
    pass


class XFrameOptionsMiddleware(_InlineHooks, clickjacking.XFrameOptionsMiddleware):
    pass


class AuthenticationMiddleware(_InlineHooks, auth.AuthenticationMiddleware):
    """Sets the lazy request.user / request.auser: nothing is read until someone asks."""


class CsrfViewMiddleware(_InlineHooks, csrf.CsrfViewMiddleware):
    """The CSRF secret lives in a cookie (CSRF_USE_SESSIONS is off), so every hook is pure."""

    def __init__(self, get_response):
        super().__init__(get_response)
        if self.async_mode:
            # Django wraps a sync process_view in a thread hop for async handlers; a coroutine
            # function is awaited as it is.
            sync_view_hook = super().process_view

            async def process_view(request, callback, callback_args, callback_kwargs):
                return sync_view_hook(request, callback, callback_args, callback_kwargs)

            markcoroutinefunction(process_view)
            self.process_view = process_view


class SessionMiddleware(_InlineHooks, sessions.SessionMiddleware):
    """Creating the lazy session is pure; saving a changed one is I/O and goes to the thread."""

    def _response_needs_thread(self, request, response) -> bool:
        session = getattr(request, "session", None)
        if session is None:
            return False
        return (session.modified or settings.SESSION_SAVE_EVERY_REQUEST) and not session.is_empty()


def _built(storage) -> bool:
    return storage is not None and not (isinstance(storage, SimpleLazyObject) and storage._wrapped is empty)


class MessageMiddleware(_InlineHooks, messages.MessageMiddleware):
    """Messages are stored (in the cookie, then the session) only when some were read or added.

    The storage itself (a cookie and a session backend behind a fallback) is built when a view or
    template first adds or reads a message: API requests never do, and building it cost ~1% of a
    plain /v1 request's CPU."""

    def process_request(self, request):
        request._messages = SimpleLazyObject(lambda: default_storage(request))

    def process_response(self, request, response):
        if not _built(getattr(request, "_messages", None)):
            return response  # never built, so nothing was added or read
        return super().process_response(request, response)

    def _response_needs_thread(self, request, response) -> bool:
        storage = getattr(request, "_messages", None)
        return _built(storage) and (storage.used or storage.added_new)
