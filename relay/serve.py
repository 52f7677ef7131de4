"""`python -m relay.serve`: one production Relay instance, with a graceful drain on SIGTERM.

The server is uvicorn with uvloop and httptools: it won the measurement in
bench/server_choice.py (HTTP, SSE and WebSocket) against daphne and gunicorn with uvicorn
workers. One process per instance; scale out with more instances behind nginx
(platform/nginx/), which is also how rolling restarts stay invisible.

On SIGTERM (or Ctrl-C) the instance drains:
1. /readyz answers 503 at once (relay.health.start_draining) for any orchestrator polling it;
2. the listening socket closes: new connections are refused, and nginx sends them elsewhere
   (`proxy_next_upstream error`);
3. idle keep-alive connections close; requests and SSE streams in flight run to their end,
   for at most RELAY_DRAIN_SECONDS; after that they are cancelled, and the runner stores what
   was generated as `cancelled` and bills it;
4. the work left after answers finishes (`relay.eventloop.later`: closing transactions of model
   calls answered before their commit), for at most RELAY_DRAIN_SECONDS again; what is still
   pending then is cancelled and recovered from the ledger by the periodic job;
5. what the apps hold open closes (`relay.health.on_shutdown`: pooled upstream connections), then the
   database connections of the ORM thread pool, and the process exits.
WebSocket connections are closed with 1012 (service restart) when the drain begins; clients
reconnect to another instance and continue the conversation by its id.

Environment: RELAY_HOST (127.0.0.1), RELAY_PORT (8000), RELAY_DRAIN_SECONDS (30),
RELAY_BACKLOG (2048), plus every setting of relay/settings.py.
"""

from __future__ import annotations

import os
import warnings

import uvicorn

# The largest WebSocket message uvicorn accepts, counted after decompression. agents.consumers
# refuses frames over MAX_FRAME_BYTES (64 KiB) itself and keeps the socket open; this bound, twice
# that (relay may not import agents: tests/security/test_ws_transport.py keeps the two in step),
# stops anything far larger before it is buffered (close 1009) instead of uvicorn's 16 MiB.
WS_MAX_MESSAGE_BYTES = 128 * 1024
# Messages uvicorn buffers for one socket before it stops reading it (default 32): the consumer
# handles them one at a time, so a few are enough and 32 × WS_MAX_MESSAGE_BYTES is not.
WS_MAX_QUEUE = 4
# uvicorn's `websockets` implementation (websockets' legacy protocol) is kept although uvicorn
# deprecates it: it is the one that honours ws_max_queue. `websockets-sansio` queues every frame of
# a read, thousands per socket before it authenticates; tests/security/test_ws_transport.py fails
# if `websockets` comes to mean that, so its warning at every start says nothing to act on.
_KEPT_WS_WARNING = "The `websockets` implementation is deprecated"


class DrainingServer(uvicorn.Server):
    """uvicorn's server, turning /readyz to 503 the moment the stop signal arrives."""

    async def startup(self, sockets=None) -> None:
        from relay.eventloop import later

        later.serve_here()  # this loop outlives its requests: closings may commit after the answer
        await super().startup(sockets)

    async def shutdown(self, sockets=None) -> None:
        from relay.eventloop import later, pg
        from relay.health import close_held_open

        await super().shutdown(sockets)
        await later.drain(self.config.timeout_graceful_shutdown or 30)
        await close_held_open()
        await pg.close_loop_connection()

    def handle_exit(self, sig, frame) -> None:
        from relay.health import start_draining

        start_draining()
        super().handle_exit(sig, frame)
        # A completed drain is a clean exit (status 0), not a death by the signal uvicorn would
        # otherwise raise again once it has stopped.
        self._captured_signals.clear()


def build_config() -> uvicorn.Config:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "relay.settings")
    from django.conf import settings

    return uvicorn.Config(
        "relay.asgi:application",
        host=os.environ.get("RELAY_HOST", "127.0.0.1"),
        port=int(os.environ.get("RELAY_PORT", "8000")),
        loop="uvloop", http="httptools", ws="websockets",
        lifespan="off",  # Django's ASGI handler has no lifespan support
        # Client addresses come from X-Forwarded-For through relay/http.py and
        # RELAY_TRUSTED_PROXY_COUNT, so uvicorn must not rewrite them itself.
        proxy_headers=False,
        access_log=False,  # nginx logs requests; Relay logs errors and the audit trail
        log_level=os.environ.get("RELAY_SERVER_LOG_LEVEL", "warning"),
        timeout_graceful_shutdown=settings.RELAY_DRAIN_SECONDS,
        # Longer than nginx keeps idle upstream connections (60 s), so nginx always closes
        # first and never sends a request on a connection Relay is closing.
        timeout_keep_alive=int(os.environ.get("RELAY_KEEPALIVE_SECONDS", "65")),
        backlog=int(os.environ.get("RELAY_BACKLOG", "2048")),
        ws_max_size=WS_MAX_MESSAGE_BYTES, ws_max_queue=WS_MAX_QUEUE,
        # Off: with it, a few compressed bytes from a client not yet authenticated make the server
        # inflate up to ws_max_size, and every socket holds zlib state; Relay's frames are small JSON.
        ws_per_message_deflate=False,
    )


def _settle_startup_objects() -> None:
    """Load the application now and move what it allocated out of the garbage collector's way.

    Django, DRF and the app leave ~150,000 long-lived objects, which every full collection would
    walk again (~70 ms each here) while the requests' short-lived objects trigger collections.
    Frozen, they are never scanned; the young generation's threshold is raised because a
    request allocates thousands of objects that die with it.
    """
    import gc

    import relay.asgi  # noqa: F401  (uvicorn finds it imported)

    gc.collect()
    gc.freeze()
    gc.set_threshold(int(os.environ.get("RELAY_GC_THRESHOLD", "10000")), 20, 20)


def main() -> None:
    from uvicorn.config import UvicornDeprecationWarning

    warnings.filterwarnings("ignore", message=_KEPT_WS_WARNING, category=UvicornDeprecationWarning)
    config = build_config()
    _settle_startup_objects()
    server = DrainingServer(config)
    try:
        server.run()
    finally:
        from relay.eventloop.db import close_db_threads

        close_db_threads()


if __name__ == "__main__":
    main()
