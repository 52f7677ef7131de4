"""Small HTTP facts shared by middleware, authentication and audit."""

import ipaddress

from django.conf import settings


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
