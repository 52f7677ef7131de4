"""The WebSocket transport of relay.serve bounds what a client, signed in or not, makes it buffer.

agents.consumers refuses frames over MAX_FRAME_BYTES, but only once uvicorn has read, inflated
and queued them: uvicorn's defaults (16 MiB messages, 32 queued, per-message deflate) let one
socket that never authenticates make the server hold half a gigabyte.
"""

import asyncio
import json
import threading
import time

import pytest
import uvicorn
import websockets

from agents.consumers import MAX_FRAME_BYTES
from relay import serve

pytestmark = pytest.mark.django_db(transaction=True)


def test_the_transport_bound_sits_just_above_the_consumers_own():
    # Control: relay.serve.build_config's ws_* options (uvicorn's defaults: 16 MiB, 32, deflate on).
    config = serve.build_config()
    assert MAX_FRAME_BYTES <= config.ws_max_size <= 2 * MAX_FRAME_BYTES
    assert config.ws_max_queue <= 4
    assert config.ws_per_message_deflate is False


class ProductionServer:
    """relay.serve's own uvicorn config, served from a thread on a free port."""

    def __init__(self):
        from channels.layers import channel_layers

        from tests.support.ports import bound_socket

        channel_layers._reset_backends("CHANNEL_LAYERS")  # a layer is tied to the loop that first used it
        self.socket = bound_socket()
        self.url = f"ws://127.0.0.1:{self.socket.getsockname()[1]}/ws/chat/"
        self.server = uvicorn.Server(serve.build_config())
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "relay.serve's config did not start"
            time.sleep(0.01)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=10)


def test_an_unauthenticated_megabyte_frame_is_closed_with_1009(settings):
    # Control: relay.serve WS_MAX_MESSAGE_BYTES (the consumer would answer `invalid_frame` and keep reading).
    settings.RELAY_DB_THREAD_SENSITIVE = False
    settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, "127.0.0.1"]

    async def scenario(url):
        async with websockets.connect(url, max_size=2**22) as ws:
            # Negotiated off, so the client cannot send a small frame that inflates to a large one.
            assert ws.response.headers.get("Sec-WebSocket-Extensions") is None
            await ws.send("x" * (MAX_FRAME_BYTES + 1))  # over the consumer's limit, under the transport's
            assert json.loads(await asyncio.wait_for(ws.recv(), 20))["code"] == "invalid_frame"
            await ws.send("x" * (1024 * 1024))
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 20)
            return closed.value.rcvd.code

    with ProductionServer() as server:
        assert asyncio.run(scenario(server.url)) == 1009
