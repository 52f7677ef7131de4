"""Password guessing is limited the same way on both sign-in forms: the console's and the admin's.

Each attempt is counted before the password is checked, by an atomic increment in the shared
cache, against the client's address and against the username tried; a successful sign-in gives
its count back. Parallel guesses from many processes therefore cannot all pass a check made
before any of them failed. The per-username count stops guessing spread over many addresses; it
is higher than the per-address one because anyone can spend it, and spending it only holds up
password sign-in for the rest of the window (keys and open sessions keep working).
(The API's token endpoint has its own DRF throttle: `login` in REST_FRAMEWORK.)
"""

from __future__ import annotations

import hashlib

from django.core.cache import cache

from relay.http import client_ip

WINDOW_SECONDS = 300
PER_ADDRESS = 10
PER_USERNAME = 30


def _counters(request, username: str) -> list[tuple[str, int]]:
    # The name is hashed: a key made of whatever a client typed would be theirs to shape.
    name = hashlib.sha256(username.strip().casefold()[:150].encode()).hexdigest()[:32]
    return [(f"login-attempts:ip:{client_ip(request.META) or 'unknown'}", PER_ADDRESS),
            (f"login-attempts:user:{name}", PER_USERNAME)]


def _increment(key: str) -> int:
    cache.add(key, 0, WINDOW_SECONDS)  # the window starts at the first attempt
    try:
        return cache.incr(key)
    except ValueError:  # expired between the two calls
        cache.set(key, 1, WINDOW_SECONDS)
        return 1


def admit(request, username) -> bool:
    """Count this attempt; False when the address or the username has used up its window."""
    within = [_increment(key) <= limit for key, limit in _counters(request, str(username or ""))]  # count both
    return all(within)


def succeeded(request, username) -> None:
    """A correct password: its attempt does not count against the window."""
    for key, _ in _counters(request, str(username or "")):
        try:
            cache.decr(key)
        except ValueError:  # the window ended meanwhile
            pass
