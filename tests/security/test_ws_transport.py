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


def _unread_messages(protocol) -> int:
    """Client messages a socket's protocol holds that the consumer has not taken yet: websockets'
    legacy queue (`ws="websockets"`), else the ASGI queue of uvicorn's sans-I/O implementations."""
    if hasattr(protocol, "messages"):
        return len(protocol.messages)
    queue = getattr(protocol, "queue", None)
    return queue.qsize() if queue is not None else 0


def _flood_of_pings(count: int) -> bytes:
    frame = json.dumps({"type": "ping"}).encode()
    # A client's frame: FIN + text opcode, the mask bit and length, a zero mask (XOR with zeros).
    return (bytes([0x81, 0x80 | len(frame)]) + b"\0\0\0\0" + frame) * count


def test_a_flood_of_small_frames_is_held_at_ws_max_queue_messages(settings):
    # Control: relay.serve's ws="websockets" with WS_MAX_QUEUE. uvicorn's `websockets-sansio` (which
    # it names as the future default) ignores ws_max_queue: it parses every frame of each read
    # (up to 256 KiB) into its queue before it pauses, thousands of messages per socket, before
    # the client has even authenticated.
    settings.RELAY_DB_THREAD_SENSITIVE = False
    settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, "127.0.0.1"]
    pings = 5000
    most = 0

    async def scenario(server):
        nonlocal most
        host, port = server.socket.getsockname()[:2]
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"GET /ws/chat/ HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
        writer.write(_flood_of_pings(pings))  # all at once: the server reads them as fast as it may
        pongs = 0
        while pongs < pings:
            # The server answers each ping with a pong frame of 15 bytes (2 of header).
            header = await asyncio.wait_for(reader.readexactly(2), 20)
            body = await reader.readexactly(header[1] & 0x7F)
            assert json.loads(body) == {"type": "pong"}
            pongs += 1
            # The server runs in its own thread: a deque's or a queue's length is one plain read.
            most = max(most, max((_unread_messages(p) for p in list(server.server.server_state.connections)),
                                 default=0))
        writer.close()
        return pongs

    with ProductionServer() as server:
        assert asyncio.run(scenario(server)) == pings
    assert 1 <= most <= serve.WS_MAX_QUEUE
