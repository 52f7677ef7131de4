"""Reconciling the books on live data: the ledger, the usage records, the answers and the audit trail.

`check()` finds four kinds of discrepancy (`manage.py reconcile` prints them):

- `ledger_counter`: a budget's spent counter for its current period differs from the sum of its
  usage records (the arithmetic of `rebuild_ledger`: `budgets.spent_in_period`) plus what the
  ledger charged for closings it still holds whose records are not written yet (a run settles,
  answers, then commits). A counter the ledger does not hold is no discrepancy: the next reserve
  loads it from the records.
- `stuck_message`: an answer still `running` longer than the reservation TTL (no live run lasts
  that long, so its instance died); `fix` writes its held closing, or interrupts it.
- `unaudited_usage`: a usage record without its `agent.run` audit event (matched on the run's
  request id, which both carry) — or without the late `agent.run_unaudited` event `fix` writes.
- `expired_reservation`: a reservation still open in the ledger past its deadline.

`fix()` repairs each and audits the repair (audit/actions.py): expired reservations are purged
by the ledger itself, stuck answers are closed by the periodic job's code, a record without
its event gets a late `agent.run_unaudited` event, and counters are rebuilt from the records.
The ledger checked is this process's (`billing.ledger.get_ledger`): Redis in production; in the
embedded mode the in-process ledger, which only the process holding it can see.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

from asgiref.sync import async_to_sync
from django.conf import settings
from django.db import transaction
from django.db.models import Exists, OuterRef
from django.db.models.fields.json import KeyTextTransform
from django.utils import timezone

from billing import budgets as budget_rules
from billing.ledger import get_ledger
from billing.models import Budget, UsageRecord
from billing.money import decimal_text

KINDS = ("ledger_counter", "stuck_message", "unaudited_usage", "expired_reservation")
LIMIT = 1000  # discrepancies listed (and fixed) per kind in one run; run again for the rest
# A run settles the ledger (holding its closing record), then commits its usage record: a counter
# that disagrees is read again after this long, so a run closing at the moment of the check is
# not reported.
GRACE_SECONDS = 0.5

logger = logging.getLogger(__name__)


@dataclass
class Discrepancy:
    kind: str
    ids: dict
    message: str
    figures: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Report:
    discrepancies: list[Discrepancy]
    checked: dict[str, int]
    ledger: str
    truncated: list[str] = field(default_factory=list)  # kinds with more than LIMIT discrepancies

    @property
    def ok(self) -> bool:
        return not self.discrepancies

    def as_dict(self) -> dict:
        return {"ok": self.ok, "ledger": self.ledger, "checked": self.checked, "truncated": self.truncated,
                "discrepancies": [d.as_dict() for d in self.discrepancies]}


def check(now: datetime | None = None, *, ttl: float | None = None, grace: float = GRACE_SECONDS) -> Report:
    """Every discrepancy at `now`; `ttl` (default settings.RELAY_BUDGET_RESERVATION_TTL) bounds a live run.

    Raises billing.ledger.LedgerUnavailable when the ledger cannot be read.
    """
    now = now or timezone.now()
    ttl = settings.RELAY_BUDGET_RESERVATION_TTL if ttl is None else ttl
    items = current_budgets(now)
    counters, suspects = counter_mismatches(items, now, grace)
    running, stuck = stuck_messages(now, ttl)
    records, unaudited = unaudited_usage()
    found = {"ledger_counter": suspects, "stuck_message": stuck, "unaudited_usage": unaudited,
             "expired_reservation": expired_reservations(items, now)}
    report = Report([], {"budgets": len(items), "ledger_counters": counters, "running_messages": running,
                         "usage_records": records}, ledger_kind())
    for kind in KINDS:
        report.discrepancies += found[kind][:LIMIT]
        if len(found[kind]) > LIMIT:
            report.truncated.append(kind)
    return report


def ledger_kind() -> str:
    return "redis" if settings.REDIS_URL else "in-process"


def current_budgets(now: datetime) -> list[budget_rules.Covering]:
    budgets = Budget.objects.select_related("organization", "team", "user", "api_key").order_by("pk")
    return [budget_rules.covering(budget, now) for budget in budgets]


# -- a. counters ---------------------------------------------------------------------------------


def counter_mismatches(items: list, now: datetime, grace: float) -> tuple[int, list[Discrepancy]]:
    """(counters compared, the ones that disagree with the records, twice `grace` seconds apart)."""
    compared, suspects = _compare(items, now)
    if suspects and grace:
        time.sleep(grace)
        _, suspects = _compare([item for item, _, _ in suspects], now)
    return compared, [_counter_discrepancy(item, in_ledger, in_records) for item, in_ledger, in_records in suspects]


def _compare(items: list, now: datetime) -> tuple[int, list[tuple]]:
    # The ledger first, then the records: a run closing between the reads is off in the first
    # look only, not in the second.
    counters, held = async_to_sync(_ledger_reads)([item.scope_key for item in items])
    pending = _charged_unrecorded(held)
    suspects = []
    for item in items:
        if item.scope_key in counters:
            in_records = budget_rules.spent_in_period(item.budget, now) + pending.get(item.scope_key, 0)
            if in_records != counters[item.scope_key]:
                suspects.append((item, counters[item.scope_key], in_records))
    return len(counters), suspects


async def _ledger_reads(scope_keys: list[str]) -> tuple[dict, dict]:
    ledger = get_ledger()
    return await ledger.counters(scope_keys), await ledger.held_closings()


def _charged_unrecorded(held: dict) -> dict[str, int]:
    """Per scope: what the ledger charged for held closings not in the usage records yet."""
    recorded = set(UsageRecord.objects.filter(request_id__in=list(held)).values_list("request_id", flat=True))
    pending: dict[str, int] = {}
    for request_id, closing in held.items():
        if request_id not in recorded:
            for scope in closing.scopes:
                pending[scope] = pending.get(scope, 0) + closing.charged_nanos
    return pending


def _counter_discrepancy(item, in_ledger: int, in_records: int) -> Discrepancy:
    budget = item.budget
    return Discrepancy(
        "ledger_counter", {"budget": budget.pk, "scope_key": item.scope_key},
        f"ledger counter off: budget {budget.pk} ({budget.period} {budget_rules.target_name(budget)}, "
        f"{item.scope_key}) holds {in_ledger} nano-USD spent, its usage records sum to {in_records} nano-USD",
        {"ledger_nanos": in_ledger, "usage_nanos": in_records, "organization": budget.organization_id})


# -- b. stuck answers ----------------------------------------------------------------------------


def stuck_messages(now: datetime, ttl: float) -> tuple[int, list[Discrepancy]]:
    """(answers running now, those running for longer than the TTL)."""
    from agents.actions.recovery import held_closings
    from agents.jobs import stale_running_messages
    from agents.models import Message

    running = Message.objects.filter(status=Message.Status.RUNNING).count()
    stale = list(stale_running_messages(ttl, now)[:LIMIT + 1])
    held = held_closings(stale)
    return running, [_stuck_discrepancy(message, now, ttl, message.request_id in held) for message in stale]


def _stuck_discrepancy(message, now: datetime, ttl: float, held: bool) -> Discrepancy:
    age = int((now - message.created_at).total_seconds())
    ending = ("; the ledger holds its closing record: it answered, its commit was lost" if held
              else "")
    return Discrepancy(
        "stuck_message", {"message": str(message.pk), "request": message.request_id,
                          "conversation": str(message.conversation_id)},
        f"stuck message: answer {message.pk} (request {message.request_id}, conversation "
        f"{message.conversation_id}) still running after {age} s, past the reservation TTL of {int(ttl)} s{ending}",
        {"age_seconds": age, "started": message.created_at.isoformat(), "closing_held": held})


# -- c. usage records and their audit events ---------------------------------------------------


def unaudited_usage() -> tuple[int, list[Discrepancy]]:
    """(usage records the trail still covers, those without their run's audit event)."""
    from audit import actions
    from audit.models import AuditEvent
    from audit.services import drain

    drain()  # an event a killed process left queued is on the trail, just not chained yet
    records = UsageRecord.objects.all()
    since = _trail_start()
    if since is not None:  # older events were pruned behind a checkpoint: nothing to match there
        records = records.filter(created_at__gte=since)
    events = (AuditEvent.objects.filter(action__in=[actions.AGENT_RUN, actions.AGENT_RUN_UNAUDITED])
              .annotate(run=KeyTextTransform("run_id", "metadata")).filter(run=OuterRef("request_id")))
    lonely = records.exclude(Exists(events)).order_by("created_at")[:LIMIT + 1]
    return records.count(), [_unaudited_discrepancy(record) for record in lonely]


def _trail_start() -> datetime | None:
    from audit.models import AuditCheckpoint

    return AuditCheckpoint.objects.order_by("-last_sequence").values_list("pruned_before", flat=True).first()


def _unaudited_discrepancy(record: UsageRecord) -> Discrepancy:
    return Discrepancy(
        "unaudited_usage", {"usage_record": record.pk, "request": record.request_id,
                            "message": str(record.message_id) if record.message_id else None},
        f"usage without audit event: usage record {record.pk} (request {record.request_id}, message "
        f"{record.message_id or '-'}, {record.status}, ${decimal_text(record.cost)}) has no agent.run audit event",
        {"cost": decimal_text(record.cost), "created_at": record.created_at.isoformat()})


# -- d. reservations -----------------------------------------------------------------------------


def expired_reservations(items: list, now: datetime) -> list[Discrepancy]:
    """Reservations open past their deadline in the budgets' current periods (one per reservation)."""
    budget_of = {item.scope_key: item.budget for item in items}
    found = async_to_sync(_expired_in)(list(budget_of), now.timestamp())
    return [_reservation_discrepancy(held, budget_of, now) for held in found.values()]


async def _expired_in(scope_keys: list[str], now: float) -> dict:
    ledger, found = get_ledger(), {}
    for scope in scope_keys:
        for held in await ledger.expired_reservations(scope, now):
            found.setdefault(held.request_id, held)
    return found


def _reservation_discrepancy(held, budget_of: dict, now: datetime) -> Discrepancy:
    budgets = [budget_of[scope].pk for scope in held.scopes if scope in budget_of]
    late = int(now.timestamp() - held.deadline)
    named = f"budget {budgets[0]}" if len(budgets) == 1 else f"budgets {', '.join(map(str, budgets))}"
    deadline = datetime.fromtimestamp(held.deadline, UTC).isoformat(timespec="seconds")
    return Discrepancy(
        "expired_reservation", {"request": held.request_id, "budgets": budgets},
        f"expired reservation: request {held.request_id} holds {held.amount} nano-USD on {named} "
        f"({', '.join(held.scopes)}), {late} s past its deadline {deadline}",
        {"amount_nanos": held.amount, "scope_keys": held.scopes, "deadline": deadline,
         "organization": budget_of[held.scopes[0]].organization_id if held.scopes[0] in budget_of else None})


# -- repairs -------------------------------------------------------------------------------------


def fix(report: Report, now: datetime | None = None) -> list[Discrepancy]:
    """Repair each discrepancy of the report, auditing each repair; the repairs made.

    Reservations are released first and counters rebuilt last, from the records as they are then.
    """
    now = now or timezone.now()
    order = ("expired_reservation", "stuck_message", "unaudited_usage", "ledger_counter")
    fixers = {"expired_reservation": _release, "stuck_message": _interrupt, "unaudited_usage": _record_late,
              "ledger_counter": _rebuild}
    done = []
    for kind in order:
        for found in report.discrepancies:
            if found.kind == kind and (repair := _repaired(fixers[kind], found, now)) is not None:
                done.append(repair)
    return done


def _repaired(fixer, found: Discrepancy, now: datetime) -> Discrepancy | None:
    """One repair; one that fails is logged and left in the next report, and the others are made."""
    try:
        return fixer(found, now)
    except Exception:
        logger.exception("could not repair %s %s; it stays in the report", found.kind, found.ids)
        return None


def _release(found: Discrepancy, now: datetime) -> Discrepancy:
    from audit import actions
    from audit.services import record

    async def purge():  # the ledger's own purge, as every reserve runs it
        for scope in found.figures["scope_keys"]:
            await get_ledger().reserved(scope, now.timestamp())

    async_to_sync(purge)()
    request_id = found.ids["request"]
    record(actions.RESERVATION_RELEASED, resource=f"reservation:{request_id}",
           organization=found.figures["organization"],
           metadata={"request_id": request_id, "budgets": found.ids["budgets"],
                     "scope_keys": found.figures["scope_keys"], "amount_nanos": found.figures["amount_nanos"],
                     "deadline": found.figures["deadline"]})
    return Discrepancy(found.kind, found.ids, f"released reservation of request {request_id} "
                                              f"({found.figures['amount_nanos']} nano-USD)")


def _interrupt(found: Discrepancy, now: datetime) -> Discrepancy | None:
    from agents.actions.recovery import held_closings, recover_message
    from agents.models import Message

    message = Message.objects.select_related("conversation").filter(pk=found.ids["message"]).first()
    if message is None:
        return None  # it went meanwhile
    outcome = recover_message(message, by="reconcile", closing=held_closings([message]).get(message.request_id))
    if outcome is None:
        return None  # it finished meanwhile
    if outcome == "recovered":
        return Discrepancy(found.kind, found.ids, f"wrote the held closing of answer {message.pk} "
                                                  f"(request {message.request_id}): its usage record and audit event")
    return Discrepancy(found.kind, found.ids, f"marked answer {message.pk} interrupted "
                                              f"(request {message.request_id}), with its usage record")


def _record_late(found: Discrepancy, now: datetime) -> Discrepancy | None:
    from audit import actions
    from audit.services import record

    usage = UsageRecord.objects.select_related("user").filter(pk=found.ids["usage_record"]).first()
    if usage is None:
        return None
    with transaction.atomic():
        record(actions.AGENT_RUN_UNAUDITED, status=actions.ERROR, actor=usage.user,
               organization=usage.organization_id,
               resource=f"message:{usage.message_id}" if usage.message_id else f"usage:{usage.request_id}",
               metadata={"run_id": usage.request_id, "usage_record": usage.pk, "agent": usage.agent,
                         "model": usage.model, "status": usage.status, "cost": decimal_text(usage.cost),
                         "input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens,
                         "created_at": usage.created_at, "found_by": "reconcile"})
    return Discrepancy(found.kind, found.ids, f"recorded the missing audit event of usage record {usage.pk} "
                                              f"(request {usage.request_id}) as {actions.AGENT_RUN_UNAUDITED}")


def _rebuild(found: Discrepancy, now: datetime) -> Discrepancy | None:
    from audit import actions
    from audit.services import record

    budget = Budget.objects.select_related("organization", "team", "user", "api_key") \
        .filter(pk=found.ids["budget"]).first()
    if budget is None:
        return None
    scope_key, spent = budget_rules.rebuild_budget(budget, now)
    record(actions.LEDGER_RECONCILED, resource=f"budget:{budget.pk}", organization=budget.organization_id,
           metadata={"budget_id": budget.pk, "scope_key": scope_key,
                     "ledger_nanos": found.figures["ledger_nanos"], "usage_nanos": spent})
    return Discrepancy(found.kind, found.ids, f"rebuilt budget {budget.pk} ({scope_key}): "
                                              f"{found.figures['ledger_nanos']} -> {spent} nano-USD")
