"""`manage.py reconcile [--fix]`: the money books agree, on live data, or the operator is told.

Each kind of discrepancy is made the way it happens (a counter gone wrong, an instance killed
mid-run, a usage record written without its audit event, a reservation nobody purged) on both
ledgers — Redis on PostgreSQL, and the embedded in-process one — and the command must name it
with its ids and exit non-zero; `--fix` repairs it, audits the repair, and exits 0.
"""

import asyncio
import datetime as dt
import io
import json
import time
import uuid
from decimal import Decimal

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from agents.models import Conversation, Message
from audit.models import AuditEvent
from billing.budgets import covering, spent_in_period
from billing.ledger import get_ledger
from billing.models import Budget, ModelPrice, UsageRecord
from tests.billing.conftest import make_budget

pytestmark = pytest.mark.django_db
TTL = 600


@pytest.fixture(autouse=True)
def _short_ttl(settings):
    settings.RELAY_BUDGET_RESERVATION_TTL = TTL
    # The periodic job's own bound is far longer: reconcile judges by the reservation TTL.
    settings.RELAY_INTERRUPTED_AFTER_SECONDS = 100 * TTL


def reconcile(*args) -> tuple[int, str]:
    """(exit status, stdout) of `manage.py reconcile *args`."""
    from django.core.management import get_commands

    assert get_commands().get("reconcile") == "agents", "there is no agents command `reconcile`"
    out = io.StringIO()
    try:
        call_command("reconcile", *args, stdout=out, stderr=io.StringIO())
    except CommandError as failed:
        return failed.returncode or 1, out.getvalue()
    return 0, out.getvalue()


def ask(client) -> dict:
    """One real run through the API: reservation, usage record, stored answer, audit event."""
    response = client.post("/api/v1/query", {"query": "integrate x^2", "agent_type": "math", "cache": False},
                           format="json")
    assert response.status_code == 200, response.content
    return response.json()


def scope_of(budget: Budget) -> str:
    return covering(Budget.objects.select_related("organization").get(pk=budget.pk), timezone.now()).scope_key


def ledger_call(method: str, *args, **kwargs):
    return asyncio.run(getattr(get_ledger(), method)(*args, **kwargs))


def stuck_message(user, *, age_seconds: float, request_id: str) -> Message:
    """What an instance killed mid-stream leaves: the answer row still `running`."""
    conversation = Conversation.objects.create(organization=user.organization, user=user, agent="math")
    message = Message.objects.create(conversation=conversation, role="assistant", agent="math", model="local-mini",
                                     status="running", request_id=request_id)
    Message.objects.filter(pk=message.pk).update(created_at=timezone.now() - dt.timedelta(seconds=age_seconds))
    return message


def expired_reservation(budget: Budget, request_id: str, amount: int) -> None:
    """A reservation whose deadline passed and that nothing purged yet (its instance died)."""
    scope = scope_of(budget)
    ledger_call("initialize", {scope: spent_in_period(budget, timezone.now())})
    granted = ledger_call("reserve", request_id, [(scope, 10**12)], min_nanos=amount, max_nanos=amount, ttl=60,
                          now=time.time() - 3600)
    assert granted.granted


def unaudited_usage(user, request_id: str) -> UsageRecord:
    return UsageRecord.objects.create(
        request_id=request_id, organization=user.organization, team=user.team, user=user, agent="math",
        model="local-mini", price=ModelPrice.objects.filter(model="local-mini").first(), input_tokens=10,
        output_tokens=5, cost=Decimal("0.000002"), status="complete", complete=True, message_id=uuid.uuid4())


def test_a_consistent_system_reconciles_clean(ledger, users, org, client_for):
    budget = make_budget(org, limit_usd="10")
    client = client_for(users["user"])
    ask(client)
    ask(client)
    make_budget(org, scope="user", target=users["viewer"], limit_usd="1")  # never used: no counter yet
    status, out = reconcile()
    assert status == 0, out
    assert "OK" in out
    status, out = reconcile("--json")
    report = json.loads(out)
    assert status == 0 and report["ok"] is True and report["discrepancies"] == []
    assert report["checked"]["budgets"] == 2 and report["checked"]["usage_records"] == 2
    assert ledger_call("spent", scope_of(budget)) == spent_in_period(budget, timezone.now()) > 0


def test_a_ledger_counter_off_is_reported_and_rebuilt_from_usage_records(ledger, users, org, client_for):
    budget = make_budget(org, limit_usd="10")
    ask(client_for(users["user"]))
    scope, truth = scope_of(budget), spent_in_period(budget, timezone.now())
    ledger_call("rebuild", scope, truth + 12345)  # e.g. a settle lost, or Redis restored from an old copy

    status, out = reconcile()
    assert status != 0
    [line] = [line for line in out.splitlines() if scope in line]
    assert f"budget {budget.pk}" in line and str(truth + 12345) in line and str(truth) in line

    status, out = reconcile("--fix")
    assert status == 0, out
    assert ledger_call("spent", scope) == truth
    event = AuditEvent.objects.get(action="ledger.reconciled", resource=f"budget:{budget.pk}")
    assert event.metadata["scope_key"] == scope
    assert (event.metadata["ledger_nanos"], event.metadata["usage_nanos"]) == (truth + 12345, truth)
    assert reconcile()[0] == 0


def test_a_message_running_past_the_reservation_ttl_is_reported_and_interrupted(ledger, users):
    user = users["user"]
    stuck = stuck_message(user, age_seconds=TTL + 60, request_id="req-stuck")
    young = stuck_message(user, age_seconds=TTL - 60, request_id="req-young")  # may still be streaming

    status, out = reconcile()
    assert status != 0
    [line] = [line for line in out.splitlines() if str(stuck.pk) in line]
    assert "req-stuck" in line and "running" in line
    assert str(young.pk) not in out

    status, out = reconcile("--fix")
    assert status == 0, out
    assert Message.objects.get(pk=stuck.pk).status == "interrupted"
    assert Message.objects.get(pk=young.pk).status == "running"
    usage = UsageRecord.objects.get(request_id="req-stuck")
    assert (usage.status, usage.cost) == ("interrupted", 0)
    event = AuditEvent.objects.get(action="agent.run", metadata__run_id="req-stuck")
    assert event.resource == f"message:{stuck.pk}" and event.metadata["status"] == "interrupted"
    assert event.metadata["interrupted_by"] == "reconcile"
    assert reconcile()[0] == 0


def test_a_usage_record_without_its_audit_event_is_reported_and_recorded(ledger, users, client_for):
    audited = ask(client_for(users["user"]))
    record = unaudited_usage(users["user"], "req-unaudited")

    status, out = reconcile()
    assert status != 0
    [line] = [line for line in out.splitlines() if "req-unaudited" in line]
    assert f"usage record {record.pk}" in line and str(record.message_id) in line
    assert audited["message_id"] not in out  # a run's own event counts

    status, out = reconcile("--fix")
    assert status == 0, out
    event = AuditEvent.objects.get(action="agent.run_unaudited", metadata__run_id="req-unaudited")
    assert event.status == "error" and event.resource == f"message:{record.message_id}"
    assert event.metadata["usage_record"] == record.pk
    assert not AuditEvent.objects.filter(action="agent.run", metadata__run_id="req-unaudited").exists()
    assert reconcile()[0] == 0


def test_an_expired_open_reservation_is_reported_and_released(ledger, users, org):
    budget = make_budget(org, limit_usd="10")
    scope = scope_of(budget)
    ledger_call("initialize", {scope: 0})
    live = ledger_call("reserve", "req-live", [(scope, 10**12)], min_nanos=700, max_nanos=700, ttl=TTL)
    assert live.granted
    expired_reservation(budget, "req-expired", 5000)

    status, out = reconcile()
    assert status != 0
    [line] = [line for line in out.splitlines() if "req-expired" in line]
    assert "5000" in line and f"budget {budget.pk}" in line
    assert "req-live" not in out

    status, out = reconcile("--fix")
    assert status == 0, out
    assert ledger_call("reserved", scope) == 700  # the live one is kept
    event = AuditEvent.objects.get(action="ledger.reservation_released", resource="reservation:req-expired")
    assert event.metadata["amount_nanos"] == 5000 and event.metadata["scope_keys"] == [scope]
    assert reconcile()[0] == 0
    ledger_call("settle", "req-live", 0)


def test_every_kind_at_once_in_json_then_fixed(ledger, users, org):
    user = users["user"]
    budget = make_budget(org, limit_usd="10")
    crashed = stuck_message(user, age_seconds=TTL * 2, request_id="req-crashed")
    expired_reservation(budget, "req-crashed", 3000)  # the same crashed run's reservation
    record = unaudited_usage(user, "req-lonely")
    ledger_call("rebuild", scope_of(budget), 1)

    status, out = reconcile("--json")
    assert status != 0
    report = json.loads(out)
    assert report["ok"] is False
    by_kind = {d["kind"]: d for d in report["discrepancies"]}
    assert len(report["discrepancies"]) == 4
    assert set(by_kind) == {"ledger_counter", "stuck_message", "unaudited_usage", "expired_reservation"}
    assert by_kind["stuck_message"]["ids"]["message"] == str(crashed.pk)
    assert by_kind["stuck_message"]["ids"]["request"] == "req-crashed"
    assert by_kind["expired_reservation"]["ids"]["request"] == "req-crashed"
    assert by_kind["unaudited_usage"]["ids"]["usage_record"] == record.pk
    assert by_kind["ledger_counter"]["ids"]["budget"] == budget.pk
    assert all(d["message"] for d in report["discrepancies"])

    status, out = reconcile("--fix", "--json")
    report = json.loads(out)
    assert status == 0 and report["ok"] is True, out
    assert sorted(f["kind"] for f in report["fixed"]) == sorted(by_kind)
    assert reconcile()[0] == 0
