"""Bind the audit context for every HTTP request and echo its request id.

It also records a 401/403 answered outside DRF (Django views, CSRF) that no one recorded, so
every denied response leaves exactly one event; DRF's refusals are recorded by the error
listener in audit.signals, which marks the context so this does not record them twice.
"""

from audit import context
from audit.actions import AUTH_FAILED, DENIED, PERMISSION_DENIED
from relay.eventloop.middleware import DualModeMiddleware

HEADER = "X-Request-ID"


def _unrecorded_denial(response, bound) -> str | None:
    if response.status_code not in (401, 403) or bound.denial_recorded:
        return None
    return AUTH_FAILED if response.status_code == 401 else PERMISSION_DENIED


def _denial_metadata(request, response) -> dict:
    return {"method": request.method, "path": request.path[:500], "status": response.status_code}


def _iterate_bound(bound, iterable):
    """A streamed body is produced after the middleware returned: keep the context around it."""
    iterator = iter(iterable)
    while True:
        with context.bind(bound):
            try:
                chunk = next(iterator)
            except StopIteration:
                return
        yield chunk


async def _aiterate_bound(bound, iterable):
    iterator = aiter(iterable)
    while True:
        with context.bind(bound):
            try:
                chunk = await anext(iterator)
            except StopAsyncIteration:
                return
        yield chunk


def _finish(response, bound):
    if response.streaming:
        wrap = _aiterate_bound if getattr(response, "is_async", False) else _iterate_bound
        response.streaming_content = wrap(bound, response.streaming_content)
    response[HEADER] = bound.request_id
    return response


class AuditContextMiddleware(DualModeMiddleware):
    def handle(self, request):
        bound = context.from_request(request)
        request.request_id = bound.request_id
        token = context.activate(bound)
        try:
            response = self.get_response(request)
            action = _unrecorded_denial(response, bound)
            if action:
                from audit.services import record

                record(action, status=DENIED, request=request, resource=request.path[:255],
                       metadata=_denial_metadata(request, response))
        finally:
            context.deactivate(token)
        return _finish(response, bound)

    async def __acall__(self, request):
        bound = context.from_request(request)
        request.request_id = bound.request_id
        token = context.activate(bound)
        try:
            response = await self.get_response(request)
            action = _unrecorded_denial(response, bound)
            if action:
                from audit.services import arecord

                await arecord(action, status=DENIED, request=request, resource=request.path[:255],
                              metadata=_denial_metadata(request, response))
        finally:
            context.deactivate(token)
        return _finish(response, bound)
