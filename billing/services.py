"""Billing rules for the runner: price a request, reserve its worst case, settle, record usage.

The contract is docs/design.md section 7. `open_charge` reserves the worst case (input + max output)
against every budget covering the request in one ledger step and returns a `Charge`; the runner
checks `charge.allows(...)` per token (pure arithmetic, no I/O), and `extend_charge` grows the
reservation before each further model call of the request (a tool round). At the end the caller's
transaction writes the request's one `UsageRecord` (`usage_record` + `record_usage`, or many at
once with `record_usages`). An agent run (agents.actions.runs) settles first, with
`settle_closing`: the ledger settles to the actual cost and holds what the run's closing
transaction will write, in one step, so the answer need not wait for the commit;
`close_charge` records then settles (`settle_charge`) a charge alone.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from django.conf import settings
from django.db import IntegrityError, connections, models, transaction
from django.utils import timezone

from billing import budgets as budget_rules
from billing import pg_rows
from billing.budgets import record_budget_event
from billing.ledger import LedgerUnavailable, get_ledger
from billing.money import cost_usd, decimal_text, nanos_per_token, usd_to_nanos
from billing.pricing import UnknownModel, current_price
from billing.rule_cache import RULES
from relay.eventloop.db import run_db

__all__ = [
    "BudgetExceeded", "UnknownModel", "LedgerUnavailable", "Charge", "open_charge", "extend_charge", "close_charge",
    "release_charge",
    "usage_record", "record_usage", "record_usages", "recorded_usage", "settle_charge", "settle_closing",
    "Settled", "raise_alerts", "usage_data", "usage_from_data",
    "cost_usd", "record_budget_event", "load_rules",
]
logger = logging.getLogger(__name__)
UNLIMITED = sys.maxsize  # granted_nanos when no hard budget covers the request
STATUSES = ("complete", "cancelled", "error", "budget_stop", "interrupted")


class BudgetExceeded(Exception):
    """A hard budget has no room for this request (402 `budget_exceeded`).

    `.scope` is "api_key", "user", "team" or "organization"; `.message` is meant for humans, e.g.
    "The monthly budget of team Research ($10.00) is used up; it resets on 2026-12-01."
    """

    def __init__(self, *, scope: str, budget_id: int, limit_usd: Decimal, spent_usd: Decimal,
                 resets_at: datetime | None, message: str):
        super().__init__(message)
        self.scope, self.budget_id, self.limit_usd = scope, budget_id, limit_usd
        self.spent_usd, self.resets_at, self.message = spent_usd, resets_at, message


@dataclass
class Charge:
    """What one request may spend, and at which price. Pure: its methods never do I/O."""

    request_id: str
    model: str
    price_id: int
    input_nanos_per_token: int  # nano-dollars per single token, rounded up
    output_nanos_per_token: int
    granted_nanos: int  # the most this request may spend; UNLIMITED when no hard budget covers it
    budget_ids: list[int] = field(default_factory=list)
    organization_id: int | None = None
    team_id: int | None = None
    opened_at: datetime | None = None  # the request belongs to the budget period it was reserved in
    # The hard budget with the least room, described when a stream stops at it (mid-stream budget_stop):
    # built then, not before every first token (its message and reset date cost ~0.07 ms on the way).
    blocking: Callable[[], dict] | None = None
    reserved: bool = False  # whether the ledger holds a reservation to settle
    reserved_nanos: int = 0  # what it holds (the ledger settles at most that)
    # the covering budgets, to grow the reservation (extend_charge): their ledger scopes and limits
    covering: list = field(default_factory=list, repr=False)
    # scope key -> (limit in nanos, alert thresholds) of the covering budgets that alert
    alerting: dict[str, tuple[int, tuple[int, ...]]] = field(default_factory=dict)

    def cost_nanos(self, input_tokens: int, output_tokens: int) -> int:
        return input_tokens * self.input_nanos_per_token + output_tokens * self.output_nanos_per_token

    def actual_nanos(self, input_tokens: int, output_tokens: int) -> int:
        """What the request is charged: its cost, capped at the grant."""
        return min(self.cost_nanos(input_tokens, output_tokens), self.granted_nanos)

    def allows(self, input_tokens: int, output_tokens: int) -> bool:
        """May the request reach these token counts? The runner asks before emitting each token."""
        return self.cost_nanos(input_tokens, output_tokens) <= self.granted_nanos

    def crosses_threshold(self, spent: dict[str, int], actual: int) -> bool:
        """Did settling `actual` take a budget across an alert threshold? (Only then is the database asked.)"""
        return any(budget_rules.crossed_thresholds(thresholds, limit, spent[scope], actual)
                   for scope, (limit, thresholds) in self.alerting.items() if scope in spent)

    def blocking_budget(self) -> BudgetExceeded | None:
        """The exception describing the budget that stops this request mid-stream (None if unlimited)."""
        if self.blocking is None:
            return None
        return BudgetExceeded(**self.blocking())


async def open_charge(*, request_id: str, user, api_key, model: str, input_tokens: int, max_output_tokens: int,
                      now: datetime | None = None, ttl: float | None = None, rules=None) -> Charge:
    """Price the model and reserve the worst case against every budget covering the request.

    rules: `load_rules(model, user, api_key, now)` already read by the caller, at the same `now`.

    Reserves up to input + max output tokens and at least input + one output token. Raises
    UnknownModel (no price), BudgetExceeded (a hard budget lacks even the minimum) or
    LedgerUnavailable (the ledger cannot be reached: never run unchecked). ValueError for a
    user outside any organization (usage is always charged to one) or negative token counts.
    """
    if user.organization_id is None:
        raise ValueError("Usage is charged to an organization; this user belongs to none.")
    if input_tokens < 0 or max_output_tokens < 0:
        raise ValueError("Token counts cannot be negative.")
    now = now or timezone.now()
    price, covering = rules or await run_db(load_rules, model, user, api_key, now)
    charge = Charge(
        request_id=request_id, model=price.model, price_id=price.pk,
        input_nanos_per_token=nanos_per_token(price.input_per_1k),
        output_nanos_per_token=nanos_per_token(price.output_per_1k),
        granted_nanos=UNLIMITED, budget_ids=[b.budget.pk for b in covering],
        organization_id=user.organization_id, team_id=user.team_id, opened_at=now,
        alerting={b.scope_key: (usd_to_nanos(b.budget.limit_usd), tuple(b.budget.alert_thresholds))
                  for b in covering if b.budget.alert_thresholds},
    )
    if not covering:
        return charge
    minimum = charge.cost_nanos(input_tokens, 1)
    worst = charge.cost_nanos(input_tokens, max_output_tokens)
    grant = await _reserve(request_id, covering, minimum, max(worst, minimum), ttl, now)
    by_key = {b.scope_key: b for b in covering}
    if not grant.granted:
        blocked = by_key[grant.denied_scope]
        error = BudgetExceeded(**budget_rules.exceeded_details(blocked, grant.spent_nanos, now))
        await run_db(_exceeded_event, error, user.organization_id, user, request_id, model)
        raise error
    hard = [b for b in covering if b.budget.hard]
    charge.granted_nanos = grant.amount if hard else UNLIMITED
    charge.reserved, charge.reserved_nanos, charge.covering = True, grant.amount, covering
    if hard:
        tightest = by_key.get(grant.tightest_scope) or hard[0]
        charge.blocking = functools.partial(budget_rules.exceeded_details, tightest, tightest.limit_nanos, now)
    return charge


async def extend_charge(charge: Charge, *, input_tokens: int, output_tokens: int, max_output_tokens: int) -> None:
    """Grow the reservation before another model call of the same request (a tool round sends the
    whole conversation again): to the cost so far (`input_tokens` of every call, `output_tokens`
    produced) plus `max_output_tokens` more, and at least one more output token.

    A hard budget's grant grows by what was added. Raises BudgetExceeded when a hard budget lacks
    even the minimum, LedgerUnavailable when the ledger cannot be reached or no longer holds the
    reservation (it outlived its TTL). Nothing to do for a request no budget covers.
    """
    if not charge.reserved:
        return
    worst = charge.cost_nanos(input_tokens, output_tokens + max_output_tokens)
    if worst <= charge.reserved_nanos:
        return
    minimum = max(0, charge.cost_nanos(input_tokens, output_tokens + 1) - charge.reserved_nanos)
    await _grow(charge, minimum, worst - charge.reserved_nanos)


async def _grow(charge: Charge, minimum: int, wanted: int) -> None:
    now = timezone.now()
    grant = await get_ledger().extend(charge.request_id, [(b.scope_key, b.limit_nanos) for b in charge.covering],
                                      min_nanos=minimum, max_nanos=wanted, now=now.timestamp())
    if grant.denied_scope:
        blocked = next(b for b in charge.covering if b.scope_key == grant.denied_scope)
        raise BudgetExceeded(**budget_rules.exceeded_details(blocked, grant.spent_nanos, now))
    if not grant.granted:
        raise LedgerUnavailable(f"The ledger no longer holds the reservation of {charge.request_id}.")
    charge.reserved_nanos += grant.amount
    if charge.granted_nanos != UNLIMITED:
        charge.granted_nanos += grant.amount


async def grow_to_cost(charge: Charge, input_tokens: int, output_tokens: int) -> None:
    """Before a run settles: where a hard budget's grant is less than the run's cost (the upstream
    counted more prompt than Relay's estimate), grow the grant by what the budgets still have room
    for, so the record bills the whole cost whenever the limit allows. What no budget has room
    for stays capped (the limit holds). A failure is logged; the cap then applies as before."""
    if not charge.reserved or charge.granted_nanos == UNLIMITED:
        return
    cost = charge.cost_nanos(input_tokens, output_tokens)
    if cost <= charge.granted_nanos:
        return
    try:
        await _grow(charge, 0, cost - charge.reserved_nanos)
    except (LedgerUnavailable, BudgetExceeded) as error:
        logger.warning("could not grow %s's grant to its cost of %d nanos: %s", charge.request_id, cost, error)
    if cost > charge.granted_nanos:
        logger.warning("%s cost %d nanos; its hard budget had room for %d: the rest is not billed",
                       charge.request_id, cost, charge.granted_nanos)


async def _cover(charge: Charge, actual: int) -> None:
    """Reserve on top what a cost passes its reservation by before it settles (the ledger settles
    at most what it holds, and the record would say more). Only where no hard budget caps the
    cost: an upstream that counted more input than the estimate. A failure is logged: `reconcile`
    then reports the counter, and `rebuild_ledger` repairs it."""
    if not charge.reserved or actual <= charge.reserved_nanos:
        return
    try:
        await _grow(charge, 0, actual - charge.reserved_nanos)
    except (LedgerUnavailable, BudgetExceeded) as error:
        logger.warning("could not reserve the %d nanos %s cost over its reservation: %s",
                       actual - charge.reserved_nanos, charge.request_id, error)


async def _reserve(request_id: str, covering: list, minimum: int, worst: int, ttl: float | None, now: datetime):
    """One ledger script; a second one only when a counter must first be loaded from UsageRecord."""
    ledger = get_ledger()
    scopes = [(b.scope_key, b.limit_nanos) for b in covering]
    ttl = ttl or settings.RELAY_BUDGET_RESERVATION_TTL
    for _attempt in range(2):
        grant = await ledger.reserve(request_id, scopes, min_nanos=minimum, max_nanos=worst, ttl=ttl,
                                     now=now.timestamp())
        if not grant.missing:
            return grant
        wanted = [b for b in covering if b.scope_key in grant.missing]
        counters = await run_db(_spent_counters, wanted, now)
        await ledger.initialize(counters)
    raise LedgerUnavailable("The budget ledger lost its counters while reserving; try again.")


def _spent_counters(wanted: list, now: datetime) -> dict[str, int]:
    return {b.scope_key: budget_rules.spent_in_period(b.budget, now) for b in wanted}


def usage_record(charge: Charge, *, user, api_key, agent: str, input_tokens: int, output_tokens: int,
                 status: str, latency_ms: int, cached: bool = False, message_id=None,
                 client_request_id: str = "") -> UsageRecord:  # noqa: F821 (lazy model import)
    """The request's one usage record, not yet saved, at the actual cost capped at the grant.

    The cap means a runner overshooting cannot overspend a hard budget. ValueError for an
    unknown status.
    """
    if status not in STATUSES:
        raise ValueError(f"Unknown status {status!r}; one of {', '.join(STATUSES)}.")
    record = _usage_record(charge, user, api_key, agent, input_tokens, output_tokens,
                           charge.actual_nanos(input_tokens, output_tokens), status, latency_ms, cached, message_id)
    record.client_request_id = client_request_id[:64]
    return record


def record_usage(record, tool_calls: list[dict] = ()) -> None:
    """Insert one request's usage record and its tool calls ({"tool", "duration_ms", "tokens", "cost_nanos"?}).

    Sync, in the caller's transaction (the caller owns the unit: the agents' closing action).
    IntegrityError when the request was recorded already (`recorded_usage` then finds it).
    """
    record_usages([(record, tool_calls)])


def record_usages(usages: list[tuple[object, list[dict]]]) -> None:
    """Many requests' (record, tool calls), in the caller's transaction; each record gets its primary key.

    On PostgreSQL one plain statement (billing.pg_rows: the hot path of every model call), else
    the ORM's two bulk inserts. IntegrityError when one of them was recorded already.
    """
    from billing.models import ToolUsage, UsageRecord

    connection = connections[UsageRecord.objects.db]
    if connection.vendor == "postgresql":
        pg_rows.insert_usages(connection, _with_tool_rows(usages))
        return
    _forget_deleted_references([record for record, _ in usages])
    UsageRecord.objects.bulk_create([record for record, _ in usages])
    ToolUsage.objects.bulk_create([ToolUsage.from_call(record, call) for record, calls in usages for call in calls])


def _forget_deleted_references(records) -> None:
    """pg_rows' `_kept_reference` through the ORM: a SET_NULL reference whose row was deleted since the
    run opened (its team) is stored as NULL."""
    from billing.models import UsageRecord

    for reference in UsageRecord._meta.concrete_fields:
        if not (reference.is_relation and reference.remote_field.on_delete is models.SET_NULL):
            continue
        named = {getattr(record, reference.attname) for record in records} - {None}
        existing = set(reference.related_model._base_manager.filter(pk__in=named).values_list("pk", flat=True))
        for record in records:
            if getattr(record, reference.attname) not in existing:
                setattr(record, reference.attname, None)


def record_usages_statement(connection, usages: list[tuple[object, list[dict]]]) -> tuple[str, list, Callable]:
    """record_usages on PostgreSQL as (sql, params, inserted) for a caller that sends the statement
    itself, in its transaction (agents.actions.runs: a closing on the event loop's connection);
    `inserted(rows)` then gives each record its primary key. `connection` only prepares the values."""
    with_tools = _with_tool_rows(usages)
    sql, params = pg_rows.usages_statement(connection, with_tools)
    return sql, params, lambda rows: pg_rows.usages_inserted(with_tools, rows, connection.alias)


def _with_tool_rows(usages: list[tuple[object, list[dict]]]) -> list[tuple[object, list]]:
    from billing.models import ToolUsage

    return [(record, [ToolUsage.from_call(record, call) for call in calls]) for record, calls in usages]


def recorded_usage(request_id: str):
    """The usage record of a request recorded already, or None."""
    from billing.models import UsageRecord

    return UsageRecord.objects.filter(request_id=request_id).first()


async def settle_charge(charge: Charge, actual_nanos: int, *, recorded: bool) -> None:
    """Settle the reservation to the actual cost, after its usage record committed (or failed to).

    A failed settle is logged: the reservation expires and `rebuild_ledger` repairs counters.
    Soft thresholds are evaluated only for a usage `recorded` now.
    """
    await _cover(charge, actual_nanos)
    spent = await _settle(charge, actual_nanos)
    if recorded:
        await raise_alerts(charge, spent, actual_nanos)


async def raise_alerts(charge: Charge, spent: dict[str, int], actual_nanos: int) -> None:
    """The soft thresholds this settle crossed (`spent`: its counters); the database is asked only then."""
    if spent and charge.crosses_threshold(spent, actual_nanos):
        await run_db(budget_rules.evaluate_thresholds, charge.budget_ids, spent, actual_nanos, charge.opened_at)


@dataclass
class Settled:
    spent: dict[str, int]  # the settled scopes' spent counters ({}: no reservation, or the ledger unreachable)
    held: bool  # the ledger holds the closing record durably: the caller may answer before it commits


async def settle_closing(charge: Charge, actual_nanos: int, closing: str) -> Settled:
    """Settle the request's reservation and store its closing record (JSON) in one ledger step.

    Runs with or without a reservation: the record is what lets a run killed between its answer
    and its commit be recovered exactly (agents.actions.recovery). If the ledger stays
    unreachable the failure is logged and nothing is held: the caller commits before answering.
    """
    await _cover(charge, actual_nanos)
    settled = await _settling(charge, lambda ledger: ledger.settle_closing(charge.request_id, actual_nanos, closing))
    return Settled(*settled) if settled is not None else Settled({}, False)


_USAGE_FIELDS = ("organization_id", "team_id", "user_id", "api_key_id", "agent", "model", "price_id", "input_tokens",
                 "output_tokens", "cost", "cached", "status", "complete", "latency_ms", "request_id",
                 "client_request_id", "message_id", "created_at")


def usage_data(record) -> dict:
    """An unsaved usage record as JSON-able data (a run's closing record carries it)."""
    return {name: _plain(getattr(record, name)) for name in _USAGE_FIELDS}


def usage_from_data(data: dict):
    """The unsaved usage record `usage_data` describes."""
    from billing.models import UsageRecord

    fields = {field.attname: field for field in UsageRecord._meta.concrete_fields}
    return UsageRecord(**{name: fields[name].to_python(data[name]) for name in _USAGE_FIELDS})


def _plain(value):
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if value is not None and not isinstance(value, (str, int, float, bool)):
        return str(value)  # a UUID
    return value


async def close_charge(charge: Charge, *, tool_calls: list[dict] = (), **usage) -> UsageRecord:  # noqa: F821
    """Record a request's usage alone in its own transaction and settle its reservation.

    `usage`: the keywords of `usage_record`. For a charge whose closing writes nothing else (an
    agent run closes through agents.actions.runs.close_run, which batches and adds its answer).
    Idempotent per request_id: a second call returns the existing record and charges nothing.
    """
    record = usage_record(charge, **usage)
    created = False
    try:
        record, created = await run_db(_record_alone, record, list(tool_calls))
    finally:
        await settle_charge(charge, charge.actual_nanos(usage["input_tokens"], usage["output_tokens"]),
                            recorded=created)
    return record


def _record_alone(record, tool_calls: list[dict]) -> tuple[object, bool]:
    try:
        with transaction.atomic():
            record_usage(record, tool_calls)
    except IntegrityError:
        existing = recorded_usage(record.request_id)
        if existing is None:
            raise
        return existing, False
    return record, True


async def release_charge(charge: Charge) -> None:
    """Give the reservation back for a request that never ran (nothing is recorded or spent)."""
    await _settle(charge, 0)


async def _settle(charge: Charge, actual: int) -> dict[str, int]:
    if not charge.reserved:
        return {}
    return await _settling(charge, lambda ledger: ledger.settle(charge.request_id, actual)) or {}


async def _settling(charge: Charge, step):
    """step(ledger)'s result, retried while the ledger is unreachable; None (logged) if it stays so.

    Under Sentinel the primary comes back (promoted) within seconds: a settlement waits for it
    rather than leave its spend out of the counter when the reservation expires.
    """
    give_up, pause = time.monotonic() + settings.RELAY_LEDGER_RETRY_SECONDS, 0.1
    while True:
        try:
            return await step(get_ledger())
        except LedgerUnavailable:
            if time.monotonic() + pause > give_up:
                break
            await asyncio.sleep(pause)
            pause = min(pause * 2, 1.0)
    logger.error("ledger unreachable settling %s; its reservation will expire; run "
                 "`manage.py rebuild_ledger` once Redis is back", charge.request_id)
    return None


def load_rules(model: str, user, api_key, now: datetime):
    """(price, covering budgets) of a request: sync, for callers that batch their DB reads (the runner)."""
    rules = RULES.view()
    return current_price(model, now, rules), budget_rules.covering_budgets(user, api_key, now, rules)


def _usage_record(charge, user, api_key, agent, input_tokens, output_tokens, actual, status, latency_ms, cached,
                  message_id):
    from billing.models import UsageRecord

    return UsageRecord(
        request_id=charge.request_id, organization_id=charge.organization_id, team_id=charge.team_id,
        user=user, api_key=api_key, agent=agent, model=charge.model, price_id=charge.price_id,
        input_tokens=input_tokens, output_tokens=output_tokens, cost=cost_usd(actual), cached=cached,
        status=status, complete=status == "complete", latency_ms=max(0, int(latency_ms)),
        message_id=message_id, created_at=charge.opened_at or timezone.now(),
    )




def _exceeded_event(error: BudgetExceeded, organization_id: int | None, user, request_id: str, model: str) -> None:
    from audit import actions

    record_budget_event(actions.BUDGET_EXCEEDED, organization_id=organization_id, actor=user, status=actions.DENIED,
                        metadata={"budget_id": error.budget_id, "scope": error.scope, "request_id": request_id,
                                  "model": model, "limit_usd": decimal_text(error.limit_usd),
                                  "spent_usd": decimal_text(error.spent_usd)})
