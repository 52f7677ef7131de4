"""WhiteNoise without the thread hop: static files served from an async-capable middleware.

WhiteNoise's middleware is sync-only. Under ASGI one sync-only middleware makes Django run the
rest of the chain through sync_to_async on the process's single shared thread, so every request
(the streaming hot path included) would queue there (docs/design.md section 11). Here only requests
under STATIC_URL leave the event loop.
"""

from asgiref.sync import sync_to_async
from whitenoise.middleware import WhiteNoiseMiddleware

from relay.eventloop.middleware import DualModeMiddleware
from relay.http import read_off_the_loop

# A static file is sent in blocks this large, each read on a worker thread (FileResponse's 4 KiB
# would be one thread hop per 4 KiB). Given the file's own sync iterator, Django's ASGI handler
# would warn and read the whole file into memory first.
BLOCK_BYTES = 64 * 1024


class AsyncWhiteNoiseMiddleware(DualModeMiddleware, WhiteNoiseMiddleware):
    def __init__(self, get_response=None, **kwargs):
        WhiteNoiseMiddleware.__init__(self, get_response, **kwargs)
        DualModeMiddleware.__init__(self, get_response)

    def _static_file(self, path: str):
        return self.find_file(path) if self.autorefresh else self.files.get(path)

    def handle(self, request):
        return WhiteNoiseMiddleware.__call__(self, request)

    async def __acall__(self, request):
        if request.path_info.startswith(self.static_prefix):
            static_file = await sync_to_async(self._static_file, thread_sensitive=False)(request.path_info)
            if static_file is not None:
                response = await sync_to_async(self.serve, thread_sensitive=False)(static_file, request)
                if response.streaming and not response.is_async:  # WhiteNoise's (a 304's or a HEAD's: empty)
                    response.block_size = BLOCK_BYTES
                    response.streaming_content = read_off_the_loop(iter(response.streaming_content), thread_sensitive=False)
                return response
        return await self.get_response(request)
