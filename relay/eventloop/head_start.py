"""An async iterator whose first step starts now and is taken later.

Work that must finish before anything reaches a caller need not hold up work that may begin
meanwhile: agents.runner asks the model while the run's opening transaction commits, and by
then the answer's first item is on its way. Nothing is handed over before the owner iterates;
closing cancels a step still running and closes the iterator.
"""

from __future__ import annotations

import asyncio

_END = object()


class HeadStart:
    def __init__(self, iterator):
        self.iterator = iterator
        self._first: asyncio.Task | None = asyncio.get_running_loop().create_task(self._step())

    async def _step(self):
        try:
            return await anext(self.iterator)
        except StopAsyncIteration:  # not raised through a task: asyncio refuses it as a result
            return _END

    def __aiter__(self):
        return self

    async def __anext__(self):
        first, self._first = self._first, None
        item = await first if first is not None else await anext(self.iterator)
        if item is _END:
            raise StopAsyncIteration
        return item

    async def aclose(self) -> None:
        first, self._first = self._first, None
        if first is not None:
            if not first.done():
                first.cancel()
                await asyncio.wait([first])
            if not first.cancelled():
                first.exception()  # a step nobody takes: its error goes with it
        await self.iterator.aclose()
