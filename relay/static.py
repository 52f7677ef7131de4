"""WhiteNoise without the thread hop: static files served from an async-capable middleware.

WhiteNoise's middleware is sync-only. Under ASGI one sync-only middleware makes Django run the
rest of the chain through sync_to_async on the process's single shared thread, so every request
(the streaming hot path included) would queue there (docs/design.md section 11). Here only requests
under STATIC_URL leave the event loop.
"""

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from whitenoise.middleware import WhiteNoiseMiddleware


class AsyncWhiteNoiseMiddleware(WhiteNoiseMiddleware):
    sync_capable = True
    async_capable = True

    def __init__(self, get_response=None, **kwargs):
        super().__init__(get_response, **kwargs)
        self._async = iscoroutinefunction(get_response)
        if self._async:
            markcoroutinefunction(self)

    def _static_file(self, path: str):
        return self.find_file(path) if self.autorefresh else self.files.get(path)

    def __call__(self, request):
        if self._async:
            return self.__acall__(request)
        return super().__call__(request)

    async def __acall__(self, request):
        if request.path_info.startswith(self.static_prefix):
            static_file = await sync_to_async(self._static_file, thread_sensitive=False)(request.path_info)
            if static_file is not None:
                return await sync_to_async(self.serve, thread_sensitive=False)(static_file, request)
        return await self.get_response(request)
