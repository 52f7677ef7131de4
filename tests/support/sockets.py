"""A stand-in for the WebSocket consumer's socket, for driving ChatConsumer._stream directly."""

import asyncio


class StuckSocket:
    """Records the events sent; the send of the first `stuck_on` event never ends by itself, as
    with a client that stopped reading. `stuck` is set when that send starts."""

    def __init__(self, stuck_on: str):
        self.stuck_on, self.sent, self.stuck = stuck_on, [], asyncio.Event()

    async def send_event(self, event):
        self.sent.append(event)
        if event["type"] == self.stuck_on and not self.stuck.is_set():
            self.stuck.set()
            await asyncio.Event().wait()
