"""Small HTTP facts shared by middleware, authentication, audit and the exports."""

import ipaddress
import itertools

from asgiref.sync import sync_to_async
from django.conf import settings
from django.http import StreamingHttpResponse


class RowsStreamingResponse(StreamingHttpResponse):
    """A response streamed from a sync iterator of rows (an ORM `.iterator()`), streamed under ASGI too.

    Given a sync iterator, Django's ASGI handler reads all of it into a list before sending a byte
    (and warns): a million-row export would sit in memory whole. Here it is read BATCH parts at a
    time on the request's sync thread (thread-sensitive: the thread whose connection holds the rows'
    cursor, where Django also closes the response), each batch sent before the next is read. Under
    WSGI and Django's test client it is the sync iterator as given.
    """

    BATCH = 200

    def __aiter__(self):
        return read_off_the_loop(iter(self.streaming_content), self.BATCH, thread_sensitive=True)


async def read_off_the_loop(parts, count: int = 1, *, thread_sensitive: bool):
    """A sync iterator's parts as an async iterator, `count` at a time read on a thread (Django's
    request thread if `thread_sensitive`, else any worker), each batch handed on before the next is read."""
    take = sync_to_async(_take, thread_sensitive=thread_sensitive)
    while batch := await take(parts, count):
        for part in batch:
            yield part


def _take(parts, count: int) -> list:
    return list(itertools.islice(parts, count))


def client_ip(meta: dict) -> str | None:
    """The client's address, trusting X-Forwarded-For only through RELAY_TRUSTED_PROXY_COUNT proxies.

    Each trusted proxy appends the address it received the request from, so the client is the
    entry that many places from the right; anything further left was written by the client and
    may be forged.
    """
    remote = meta.get("REMOTE_ADDR") or None
    hops = settings.RELAY_TRUSTED_PROXY_COUNT
    if hops <= 0:
        return remote
    forwarded = [part.strip() for part in meta.get("HTTP_X_FORWARDED_FOR", "")[:2048].split(",") if part.strip()]
    if len(forwarded) < hops:
        return remote
    candidate = forwarded[-hops]
    try:
        return str(ipaddress.ip_address(candidate))
    except ValueError:
        return remote
