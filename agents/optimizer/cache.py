"""Exact-match response cache: the same question to the same agent and model gets the stored answer.

The key is a SHA-256 of the normalized query (Unicode NFKC, case-folded, whitespace collapsed)
and the rest of what determines the answer, which `keys.answer_key` decides: the agent, the
model, the conversation, the documents the caller may read (for agents whose tools read them)
and the organization (answers never cross tenants). Entries live in Redis in production —
shared by every instance — and in a bounded in-process LRU in the embedded mode; both expire
after the organization's TTL. The cache only ever saves money: any Redis error is a miss (and a
skipped store), never a failed request.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
import unicodedata
from collections import OrderedDict

from django.conf import settings

logger = logging.getLogger(__name__)
MAX_ANSWER_CHARS = 64_000  # longer answers are not worth a cache slot
LOCAL_MAX_ENTRIES = 5_000


def normalize(query: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", query).casefold().split())


def cache_key(query: str, *, agent: str, model: str, organization: str, history: str, documents: str) -> str:
    """The hash of a key's material; what goes in is `keys.answer_key`'s decision, so call that."""
    material = json.dumps([normalize(query), agent, model, history, documents, organization], ensure_ascii=False)
    return hashlib.sha256(material.encode()).hexdigest()


class LocalStore:
    """In-process LRU with expiry (embedded mode: one process)."""

    def __init__(self, max_entries: int = LOCAL_MAX_ENTRIES):
        self.max_entries = max_entries
        self._entries: OrderedDict[str, tuple[float, str]] = OrderedDict()
        self._lock = threading.Lock()

    async def get(self, key: str) -> str | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if entry[0] <= time.monotonic():
                del self._entries[key]
                return None
            self._entries.move_to_end(key)
            return entry[1]

    async def set(self, key: str, value: str, ttl: int) -> None:
        with self._lock:
            self._entries[key] = (time.monotonic() + ttl, value)
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


class RedisStore:
    def __init__(self, target):
        from billing.ledger_redis import RedisBackend

        self.backend = RedisBackend(target)

    async def get(self, key: str) -> str | None:
        return await self.backend.call("get", key)

    async def set(self, key: str, value: str, ttl: int) -> None:
        await self.backend.client().set(key, value, ex=int(ttl))


class ResponseCache:
    def __init__(self, store, prefix: str = ""):
        self.store, self.prefix = store, prefix

    async def get(self, key: str) -> str | None:
        """The cached answer, or None (also when the store cannot be reached)."""
        try:
            raw = await self.store.get(self.prefix + key)
        except Exception:  # noqa: BLE001 - a cache failure must never fail the request
            logger.warning("response cache unreachable; treating as a miss", exc_info=True)
            return None
        if raw is None:
            return None
        try:
            return json.loads(raw)["answer"]
        except (ValueError, KeyError, TypeError):
            return None

    async def has(self, key: str) -> bool:
        """Whether anything is stored under key (a probe's mark); False when the store cannot be reached."""
        try:
            return await self.store.get(self.prefix + key) is not None
        except Exception:  # noqa: BLE001 - a cache failure must never fail the request
            logger.warning("response cache unreachable; treating as a miss", exc_info=True)
            return False

    async def mark(self, key: str, ttl: int) -> None:
        """Store a mark under key for ttl seconds (a probe: some answer under it exists)."""
        try:
            await self.store.set(self.prefix + key, "1", ttl)
        except Exception:  # noqa: BLE001
            logger.warning("response cache unreachable; probe not marked", exc_info=True)

    async def put(self, key: str, answer: str, ttl: int) -> bool:
        if not answer or len(answer) > MAX_ANSWER_CHARS or ttl <= 0:
            return False
        try:
            await self.store.set(self.prefix + key, json.dumps({"answer": answer, "at": int(time.time())}), ttl)
        except Exception:  # noqa: BLE001
            logger.warning("response cache unreachable; answer not stored", exc_info=True)
            return False
        return True


_cache: ResponseCache | None = None
_cache_lock = threading.Lock()


def get_cache() -> ResponseCache:
    """The process's cache: Redis when settings.REDIS_URL is set, else in-process."""
    global _cache
    with _cache_lock:
        if _cache is None:
            from relay import redis_clients

            store = RedisStore(redis_clients.current()) if settings.REDIS_URL else LocalStore()
            _cache = ResponseCache(store, redis_clients.key_prefix("respcache"))
        return _cache
