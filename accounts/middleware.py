"""The API key's read, started as the request comes in (accounts.admission.read_key_ahead)."""

from accounts.admission import read_key_ahead
from relay.eventloop.handler import async_view_match
from relay.eventloop.middleware import DualModeMiddleware


class KeyReadAheadMiddleware(DualModeMiddleware):
    """For a request to an async API view (the model calls), sends the admission's read of its API
    key to Redis before the rest of the middleware runs, so that trip overlaps them. Sync views
    authenticate on a thread, which reads the key its own way: nothing is read ahead for them."""

    def handle(self, request):
        return self.get_response(request)

    async def __acall__(self, request):
        if async_view_match(request.path_info) is not None and (ahead := read_key_ahead(request)) is not None:
            await ahead.sent()
        return await self.get_response(request)
