"""A socket that goes away leaves nothing behind (Trust II, point 7).

An unauthenticated WebSocket arms a timer that closes it if no auth frame comes. A client that
disconnects first must not leave that timer to fire on a closed socket: it raised "Task
exception was never retrieved" ten seconds later, log noise any client could trigger at will.
"""

import asyncio

import pytest
import websockets

from agents import consumers
from tests.conftest import ASGIServer

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.mark.parametrize("implementation", ["websockets", "websockets-sansio"])
def test_an_unauthenticated_socket_that_closes_leaves_no_timer(implementation, transactional_db, settings,
                                                               monkeypatch, unretrieved_task_errors):
    monkeypatch.setattr(consumers, "AUTH_TIMEOUT_SECONDS", 0.2)
    settings.RELAY_DB_THREAD_SENSITIVE = False
    server = ASGIServer(ws=implementation).start()  # relay/serve.py runs "websockets"
    url = server.url.replace("http://", "ws://") + "/ws/chat/"

    async def connect_and_leave():
        for _ in range(5):
            async with websockets.connect(url):
                pass  # closes at once, before any auth frame
        await asyncio.sleep(1)  # past the timeout: a timer left armed has fired by now

    try:
        asyncio.run(connect_and_leave())
    finally:
        server.stop()
    assert unretrieved_task_errors.collected() == []
