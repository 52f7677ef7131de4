from relay.eventloop import wait_for

wait_for.install()  # before any library awaits asyncio.wait_for (relay/eventloop/wait_for.py)

from relay.celery import app as celery_app  # noqa: E402 (after the fix above)

__all__ = ("celery_app",)
