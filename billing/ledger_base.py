"""The budget ledger: atomic reserve / settle of nano-dollar amounts against several scopes.

A scope key names one budget in one period (`b<id>.<created>:<period key>`); its limit comes with
each call, so a changed limit applies at once. `reserve` grants min(max_nanos, the smallest room
left across the scopes) if that is at least min_nanos, in one atomic step, else denies naming the
scope that lacks room. Reservations carry a deadline: a crashed instance's reservations are
purged (inside the next reserve touching the scope) so they cannot leak budget. `extend` grows a
live reservation the same way, for a further model call of its request (a tool round). `settle` moves a
reservation to spent at the actual amount (capped at the grant); settling a reservation that
already expired still records its spend, because the usage happened. `settle_closing` settles
and, in the same atomic step, holds the run's closing record (what its closing transaction will
write) until `forget_closings`, so a run answered before its commit can be recovered exactly.

Two implementations with one interface and one test suite: `InProcessLedger` (embedded mode)
and `RedisLedger` (billing.ledger_redis, Lua scripts; used when settings.REDIS_URL is set).
billing.ledger picks one (`get_ledger`); the Redis one builds on this module, never the reverse.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

# Kept after a reservation ends so a late or repeated settle is recognised (not charged twice).
RETENTION_SECONDS = 86400


class LedgerUnavailable(Exception):
    """The ledger cannot be reached (503 `ledger_unavailable`): never run a request unchecked."""


@dataclass
class Grant:
    granted: bool
    amount: int = 0  # nano-dollars reserved (0 when denied)
    denied_scope: str | None = None  # the scope without room for min_nanos
    spent_nanos: int = 0  # that scope's spent counter, for the refusal message
    tightest_scope: str | None = None  # when granted: the scope with the least room
    # Scopes whose spent counter does not exist yet (new period, new budget, restarted process,
    # lost Redis data): nothing was reserved; initialize them from UsageRecord and retry.
    missing: list[str] | None = None


@dataclass
class OpenReservation:
    """A reservation still held in the ledger (for `manage.py reconcile`)."""

    request_id: str
    amount: int
    deadline: float
    scopes: list[str]


@dataclass
class HeldClosing:
    """A run's closing record the ledger holds until its transaction committed (agents.actions.runs)."""

    request_id: str
    closing: str  # the JSON the closing transaction writes
    charged_nanos: int  # what its settle moved to spent, in each of its scopes
    scopes: list[str]


class Ledger:
    """The interface; every amount is an int of nano-dollars, every time a UNIX timestamp."""

    async def reserve(self, request_id: str, scopes: list[tuple[str, int]], *, min_nanos: int, max_nanos: int,
                      ttl: float, now: float | None = None) -> Grant:
        raise NotImplementedError

    async def extend(self, request_id: str, scopes: list[tuple[str, int]], *, min_nanos: int, max_nanos: int,
                     now: float | None = None) -> Grant:
        """Grow a live reservation (a further model call of the same request) like `reserve` grants:
        by min(max_nanos, the smallest room left), at least min_nanos, in one atomic step; its
        deadline stays. `scopes` are the reservation's own, with their limits now. Denied naming the
        scope without room; denied with no scope when the reservation is no longer live (settled,
        or expired and purged), or a counter is missing."""
        raise NotImplementedError

    async def settle(self, request_id: str, actual_nanos: int) -> dict[str, int]:
        """Spent per scope after settling; {} if the request holds no reservation (or was settled)."""
        raise NotImplementedError

    async def settle_closing(self, request_id: str, actual_nanos: int, closing: str,
                             now: float | None = None) -> tuple[dict[str, int], bool]:
        """settle() and hold `closing` for the request, in one atomic step (with or without a reservation).

        (spent per scope, whether the record is durable: it outlives this process). A second call
        charges nothing again and replaces the record. Held for RETENTION_SECONDS at most.
        """
        raise NotImplementedError

    async def held_closings(self, request_ids: list[str] | None = None) -> dict[str, HeldClosing]:
        """The closing records held, of these requests (None: all of them)."""
        raise NotImplementedError

    async def forget_closings(self, request_ids: list[str]) -> None:
        """Drop the closing records of these requests (their transactions committed)."""
        raise NotImplementedError

    async def release(self, request_id: str) -> None:
        """Give the whole reservation back (the request never ran)."""
        await self.settle(request_id, 0)

    async def spent(self, scope_key: str) -> int:
        raise NotImplementedError

    async def reserved(self, scope_key: str, now: float | None = None) -> int:
        """Currently reserved in the scope, after purging expired reservations."""
        raise NotImplementedError

    async def rebuild(self, scope_key: str, spent_nanos: int, since: int | None = None) -> None:
        """Overwrite the spent counter (from UsageRecord); live reservations are kept.

        since: the counter as read before the records were summed; what settles added to it
        meanwhile is kept on top (a settle between the two would otherwise be erased).
        """
        raise NotImplementedError

    async def initialize(self, counters: dict[str, int]) -> None:
        """Set spent counters that do not exist yet; existing ones are left alone."""
        raise NotImplementedError

    async def counters(self, scope_keys: list[str]) -> dict[str, int]:
        """The spent counters that exist among scope_keys (a missing one is loaded from UsageRecord
        by the next reserve, so it cannot disagree with the records)."""
        raise NotImplementedError

    async def expired_reservations(self, scope_key: str, now: float | None = None) -> list[OpenReservation]:
        """Reservations of the scope still open past their deadline, read without purging them."""
        raise NotImplementedError


@dataclass
class _Reservation:
    scopes: list[str]
    amount: int
    deadline: float
    state: str = "reserved"  # reserved | expired | settled


class InProcessLedger(Ledger):
    """Embedded mode. One lock around plain dict arithmetic: safe across threads and tasks,
    and no await inside the critical sections, so it never blocks the event loop for long."""

    def __init__(self):
        self._lock = threading.Lock()
        self._spent: dict[str, int] = {}
        self._reserved: dict[str, int] = {}
        self._deadlines: dict[str, dict[str, float]] = {}
        self._reservations: dict[str, _Reservation] = {}
        # Ended reservations in the order they ended, so forgetting them is O(1) amortized.
        self._ended: OrderedDict[str, float] = OrderedDict()
        # Closing records by request id, oldest first: (HeldClosing, forget-at). They live in this
        # process only, so they are never durable: a run here commits before it answers.
        self._closings: OrderedDict[str, tuple[HeldClosing, float]] = OrderedDict()

    def _end(self, request_id: str, res: _Reservation, state: str, now: float) -> None:
        res.state = state
        self._ended[request_id] = now + RETENTION_SECONDS
        self._ended.move_to_end(request_id)

    def _purge(self, scope: str, now: float) -> None:
        stale = [rid for rid, deadline in self._deadlines.get(scope, {}).items() if deadline <= now]
        for rid in stale:
            res = self._reservations[rid]
            for other in res.scopes:
                self._reserved[other] -= res.amount
                self._deadlines[other].pop(rid, None)
            self._end(rid, res, "expired", now)
        while self._ended:
            rid, forget_at = next(iter(self._ended.items()))
            if forget_at > now:
                break
            del self._ended[rid]
            self._reservations.pop(rid, None)

    async def reserve(self, request_id, scopes, *, min_nanos, max_nanos, ttl, now=None):
        now = time.time() if now is None else now
        with self._lock:
            existing = self._reservations.get(request_id)
            if existing is not None and existing.state == "reserved":
                return Grant(True, existing.amount)
            missing = [scope for scope, _ in scopes if scope not in self._spent]
            if missing:
                return Grant(False, missing=missing)
            tightest, room = None, None
            for scope, limit in scopes:
                self._purge(scope, now)
                left = limit - self._spent.get(scope, 0) - self._reserved.get(scope, 0)
                if left < min_nanos:
                    return Grant(False, denied_scope=scope, spent_nanos=self._spent.get(scope, 0))
                if room is None or left < room:
                    tightest, room = scope, left
            amount = max_nanos if room is None else min(max_nanos, room)
            for scope, _ in scopes:
                self._reserved[scope] = self._reserved.get(scope, 0) + amount
                self._deadlines.setdefault(scope, {})[request_id] = now + ttl
            self._reservations[request_id] = _Reservation([s for s, _ in scopes], amount, now + ttl)
            return Grant(True, amount, tightest_scope=tightest)

    async def extend(self, request_id, scopes, *, min_nanos, max_nanos, now=None):
        now = time.time() if now is None else now
        with self._lock:
            for scope, _ in scopes:
                self._purge(scope, now)
            res = self._reservations.get(request_id)
            if res is None or res.state != "reserved" or any(scope not in self._spent for scope, _ in scopes):
                return Grant(False)
            tightest, room = None, None
            for scope, limit in scopes:
                left = limit - self._spent[scope] - self._reserved.get(scope, 0)
                if left < min_nanos:
                    return Grant(False, denied_scope=scope, spent_nanos=self._spent[scope])
                if room is None or left < room:
                    tightest, room = scope, left
            amount = max(0, max_nanos if room is None else min(max_nanos, room))
            for scope, _ in scopes:
                self._reserved[scope] = self._reserved.get(scope, 0) + amount
            res.amount += amount
            return Grant(True, amount, tightest_scope=tightest)

    async def settle(self, request_id, actual_nanos):
        with self._lock:
            return self._settle(request_id, actual_nanos)[0]

    def _settle(self, request_id, actual_nanos) -> tuple[dict[str, int], int]:
        res = self._reservations.get(request_id)
        if res is None or res.state == "settled":
            return {}, 0
        actual = max(0, min(int(actual_nanos), res.amount))
        result = {}
        for scope in res.scopes:
            if res.state == "reserved":
                self._reserved[scope] -= res.amount
                self._deadlines[scope].pop(request_id, None)
            self._spent[scope] = self._spent.get(scope, 0) + actual
            result[scope] = self._spent[scope]
        self._end(request_id, res, "settled", time.time())
        return result, actual

    async def settle_closing(self, request_id, actual_nanos, closing, now=None):
        now = time.time() if now is None else now
        with self._lock:
            spent, charged = self._settle(request_id, actual_nanos)
            earlier = self._closings.pop(request_id, None)
            if earlier is not None and not spent:  # settled before: keep what that settle charged
                charged = earlier[0].charged_nanos
            res = self._reservations.get(request_id)
            held = HeldClosing(request_id, closing, charged, list(res.scopes) if res else [])
            self._closings[request_id] = (held, now + RETENTION_SECONDS)
            while self._closings:
                oldest, (_, forget_at) = next(iter(self._closings.items()))
                if forget_at > now:
                    break
                del self._closings[oldest]
            return spent, False

    async def held_closings(self, request_ids=None):
        with self._lock:
            wanted = self._closings if request_ids is None else request_ids
            return {rid: self._closings[rid][0] for rid in wanted if rid in self._closings}

    async def forget_closings(self, request_ids):
        with self._lock:
            for rid in request_ids:
                self._closings.pop(rid, None)

    async def spent(self, scope_key):
        with self._lock:
            return self._spent.get(scope_key, 0)

    async def reserved(self, scope_key, now=None):
        with self._lock:
            self._purge(scope_key, time.time() if now is None else now)
            return self._reserved.get(scope_key, 0)

    async def rebuild(self, scope_key, spent_nanos, since=None):
        with self._lock:
            added = 0 if since is None else max(0, self._spent.get(scope_key, 0) - since)
            self._spent[scope_key] = int(spent_nanos) + added

    async def initialize(self, counters):
        with self._lock:
            for scope, spent in counters.items():
                self._spent.setdefault(scope, int(spent))

    async def counters(self, scope_keys):
        with self._lock:
            return {scope: self._spent[scope] for scope in scope_keys if scope in self._spent}

    async def expired_reservations(self, scope_key, now=None):
        now = time.time() if now is None else now
        with self._lock:
            found = []
            for rid, deadline in self._deadlines.get(scope_key, {}).items():
                res = self._reservations.get(rid)
                if deadline <= now and res is not None and res.state == "reserved":
                    found.append(OpenReservation(rid, res.amount, deadline, list(res.scopes)))
            return found
