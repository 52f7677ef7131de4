"""Process-local copies of rows every model call reads but that rarely change (prices, budgets).

Reading them from the database costs more than the rest of a request's checks. Each process
keeps its own copy, tagged with a version token held in the shared cache (Redis in
production): whoever changes the rows replaces the token (`bump`), so every process reloads on
its next read. One cache GET per lookup instead of several queries, and no stale window
between instances, which a plain time-to-live would leave (a new hard budget must bind at once).

`bump` runs twice: at once (readers in this process, and tests inside one transaction) and
again after the change commits, so that a reader who loaded the old rows between the two
cannot keep them under the new token.

Inside `one_read()` (one trip to the DB threads that authenticates a request and then reads
its rows), the first `get_along(key)` brings every copy's token in the same cache round trip
as its own key, and the copies' next `view()` in that block uses them: a request's token is
then read with its API key, at the start of the request, instead of one trip later.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
import time
import uuid

from django.core.cache import cache
from django.db import transaction

_registered: list[VersionedCache] = []
# {cache name: token} read along inside one_read(); None outside it.
_read_along: contextvars.ContextVar[dict | None] = contextvars.ContextVar("versioned_read_along", default=None)


@contextlib.contextmanager
def one_read(tokens: dict | None = None):
    """A block whose first get_along() also reads every copy's version token (see the module
    docstring); or, given `tokens` ({copy name: token}, read with `token_keys()` in the caller's
    own trip), a block whose copies use those."""
    reset = _read_along.set(dict(tokens) if tokens else {})
    try:
        yield
    finally:
        _read_along.reset(reset)


def get_along(key: str):
    """cache.get(key); the first call inside one_read() reads the version tokens in the same round trip."""
    tokens = _read_along.get()
    if tokens is None or tokens or not _registered:
        return cache.get(key)
    names = token_keys()
    found = cache.get_many([key, *names])
    for version_key, name in names.items():
        tokens[name] = found.get(version_key)  # None (no token yet): view() reads and creates it
    return found.get(key)


def token_keys() -> dict[str, str]:
    """{cache key of a copy's version token: the copy's name}, to read along with a key elsewhere
    (the admission on the event loop), then handed to one_read(tokens)."""
    return {c._version_key: c.name for c in _registered}


class VersionedCache:
    def __init__(self, name: str, *, max_entries: int = 10_000, max_age: float = 300.0):
        self.name, self.max_entries, self.max_age = name, max_entries, max_age
        self._entries: dict = {}
        self._lock = threading.Lock()
        _registered.append(self)

    @property
    def _version_key(self) -> str:
        return f"versioned:{self.name}"

    def view(self) -> _View:
        """The copies under the current version: one cache read, however many lookups follow (none when
        the token was read along with the request's key, inside one_read())."""
        tokens = _read_along.get()
        version = tokens.pop(self.name, None) if tokens else None
        if version is None:
            version = cache.get(self._version_key)
        if version is None:  # never tag copies with "no token": an evicted token would revive them
            cache.add(self._version_key, uuid.uuid4().hex, None)
            version = cache.get(self._version_key)
        return _View(self, version)

    def bump(self, **signal_kwargs) -> None:
        """The rows changed: every process reloads (usable directly as a signal receiver)."""
        self._replace_token()
        transaction.on_commit(self._replace_token)

    def _replace_token(self) -> None:
        tokens = _read_along.get()
        if tokens:
            tokens.pop(self.name, None)  # a token read before this change is not this block's to use
        cache.set(self._version_key, uuid.uuid4().hex, None)
        self.clear()

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


class _View:
    def __init__(self, owner: VersionedCache, version):
        self.owner, self.version = owner, version

    def get(self, key, load):
        """The copy for key, or load() stored as the copy when it is missing, older or outdated."""
        owner, now = self.owner, time.monotonic()
        entry = owner._entries.get(key)
        if entry is not None and entry[0] == self.version and now - entry[1] < owner.max_age:
            return entry[2]
        value = load()
        with owner._lock:
            if len(owner._entries) >= owner.max_entries:
                owner._entries.clear()  # a rare reset beats tracking recency on every read
            owner._entries[key] = (self.version, now, value)
        return value
