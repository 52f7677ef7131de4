"""open_charge / close_charge as the runner uses them, on both ledgers, against the database."""

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.core.management import call_command
from django.db.models import Sum

from accounts.actions.keys import create_api_key
from billing import services
from billing.budgets import covering, spent_in_period
from billing.ledger import get_ledger
from billing.models import BudgetAlert, ModelPrice, ToolUsage, UsageRecord
from billing.money import cost_usd
from tests.billing.conftest import make_budget, rid, seed_prices

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _prices(transactional_db):
    seed_prices()
# local-mini: 0.0001 / 0.0002 USD per 1K tokens = 100 / 200 nano-USD per token.
IN, OUT = 10, 20
WORST = IN * 100 + OUT * 200  # 5000 nano-USD


def usd(nanos):
    return cost_usd(nanos)


async def one_run(user, key=None, *, outputs=OUT, status="complete", now=None, model="local-mini", **close):
    """What the runner does: open, emit tokens while the charge allows them, close."""
    charge = await services.open_charge(request_id=rid(), user=user, api_key=key, model=model, input_tokens=IN,
                                        max_output_tokens=OUT, now=now)
    produced = 0
    while produced < outputs and charge.allows(IN, produced + 1):
        produced += 1
    final = status if produced == outputs else "budget_stop"
    record = await services.close_charge(charge, user=user, api_key=key, agent="math", input_tokens=IN,
                                         output_tokens=produced, status=final, latency_ms=5, **close)
    return charge, record


def test_price_per_token_is_rounded_up_and_recorded_with_its_version(users, ledger):
    charge, record = asyncio.run(one_run(users["user"]))
    assert (charge.input_nanos_per_token, charge.output_nanos_per_token) == (100, 200)
    assert charge.granted_nanos == services.UNLIMITED  # no hard budget covers it
    record.refresh_from_db()
    assert record.cost == usd(WORST) and record.price.model == "local-mini" and record.complete
    # A new price row applies from its effective time; the old record keeps its price.
    ModelPrice.objects.create(model="local-mini", input_per_1k=Decimal("0.0002"), output_per_1k=Decimal("0.0004"))
    _, later = asyncio.run(one_run(users["user"]))
    assert later.price_id != record.price_id and later.cost == usd(2 * WORST)
    record.refresh_from_db()
    assert record.cost == usd(WORST)


def test_unknown_model_is_refused_before_anything_is_reserved(users, ledger):
    with pytest.raises(services.UnknownModel, match="no-such-model"):
        asyncio.run(one_run(users["user"], model="no-such-model"))
    assert not UsageRecord.objects.exists()


def test_a_budget_of_exactly_one_request_allows_exactly_one(org, users, ledger):
    make_budget(org, scope="user", target=users["user"], limit_usd=usd(WORST))
    asyncio.run(one_run(users["user"]))
    with pytest.raises(services.BudgetExceeded) as refused:
        asyncio.run(one_run(users["user"]))
    error = refused.value
    assert error.scope == "user" and error.limit_usd == usd(WORST) and error.spent_usd == usd(WORST)
    assert error.resets_at is not None and "monthly budget of user user" in error.message
    assert UsageRecord.objects.count() == 1


def test_a_partial_grant_stops_generation_with_budget_stop(org, users, ledger):
    budget = make_budget(org, scope="team", target=users["user"].team, limit_usd=usd(WORST + 3000))
    asyncio.run(one_run(users["user"]))
    charge, record = asyncio.run(one_run(users["user"]))
    assert charge.granted_nanos == 3000 and record.status == "budget_stop" and not record.complete
    assert record.output_tokens == 10  # 1000 input + 10 * 200 output = the 3000 granted
    blocked = charge.blocking_budget()
    assert blocked.budget_id == budget.pk and "team Research" in blocked.message
    assert asyncio.run(get_ledger().spent(covering(budget, record.created_at).scope_key)) == WORST + 3000


def test_close_is_idempotent_and_records_tools(users, ledger):
    async def scenario():
        charge = await services.open_charge(request_id="req-1", user=users["user"], api_key=None, model="local-mini",
                                            input_tokens=IN, max_output_tokens=OUT)
        kwargs = dict(user=users["user"], api_key=None, agent="math", input_tokens=IN, output_tokens=3,
                      status="cancelled", latency_ms=9, tool_calls=[{"tool": "sympy", "duration_ms": 12}])
        first = await services.close_charge(charge, **kwargs)
        second = await services.close_charge(charge, **kwargs)
        return first, second

    first, second = asyncio.run(scenario())
    assert first.pk == second.pk and UsageRecord.objects.count() == 1
    assert list(ToolUsage.objects.values_list("tool", "duration_ms")) == [("sympy", 12)]
    with pytest.raises(ValueError):
        asyncio.run(services.close_charge(services.Charge("x", "m", 1, 1, 1, 1), user=None, api_key=None, agent="a",
                                          input_tokens=0, output_tokens=0, status="weird", latency_ms=0))


def test_fifty_concurrent_runs_never_pass_the_limit(org, users, ledger):
    user = users["user"]
    key = create_api_key(user, "k").key
    budget = make_budget(org, scope="api_key", target=key, limit_usd=usd(10 * WORST))

    async def attempt():
        try:
            return await one_run(user, key)
        except services.BudgetExceeded:
            return None

    async def scenario():
        return await asyncio.gather(*(attempt() for _ in range(50)))

    results = [r for r in asyncio.run(scenario()) if r]
    recorded = UsageRecord.objects.aggregate(total=Sum("cost"))["total"]
    spent = asyncio.run(get_ledger().spent(covering(budget, results[0][1].created_at).scope_key))
    assert UsageRecord.objects.count() == len(results) >= 10
    assert recorded == usd(spent) <= budget.limit_usd


def test_the_period_a_request_is_reserved_in_is_the_one_it_is_charged_to(org, users, ledger):
    org.time_zone = "Europe/Berlin"
    org.save()
    budget = make_budget(org, scope="organization", period="monthly", limit_usd=usd(WORST))
    last_second = datetime(2026, 11, 30, 22, 59, 59, tzinfo=UTC)  # 23:59:59 in Berlin, November
    _, record = asyncio.run(one_run(users["user"], now=last_second))
    assert record.created_at == last_second
    with pytest.raises(services.BudgetExceeded) as refused:
        asyncio.run(one_run(users["user"], now=last_second + timedelta(milliseconds=500)))
    assert refused.value.resets_at == datetime(2026, 12, 1, tzinfo=refused.value.resets_at.tzinfo)
    assert "resets on 2026-12-01" in refused.value.message
    december = last_second + timedelta(seconds=2)
    asyncio.run(one_run(users["user"], now=december))  # a new period starts at zero, no reset job
    assert spent_in_period(budget, last_second) == WORST and spent_in_period(budget, december) == WORST


def test_a_crashed_run_frees_its_reservation_after_the_ttl(org, users, ledger):
    make_budget(org, scope="user", target=users["user"], limit_usd=usd(WORST))
    now = datetime(2026, 11, 26, 12, tzinfo=UTC)
    asyncio.run(services.open_charge(request_id=rid(), user=users["user"], api_key=None, model="local-mini",
                                     input_tokens=IN, max_output_tokens=OUT, now=now, ttl=60))  # never closed
    with pytest.raises(services.BudgetExceeded):
        asyncio.run(one_run(users["user"], now=now + timedelta(seconds=30)))
    asyncio.run(one_run(users["user"], now=now + timedelta(seconds=61)))


def test_soft_thresholds_alert_once_per_threshold_and_period(org, users, ledger, monkeypatch, settings):
    budget = make_budget(org, scope="organization", limit_usd=usd(4 * WORST), hard=False, thresholds=[50, 80, 100])
    sent = []
    monkeypatch.setattr("urllib.request.urlopen", lambda request, timeout: sent.append(request) or _Reply())
    settings.RELAY_BUDGET_WEBHOOK_URL = "http://hooks.example/budget"
    settings.CELERY_TASK_ALWAYS_EAGER = True
    for _ in range(5):  # 25%, 50%, 75%, 100%, 125%: soft budgets never stop a run
        _, record = asyncio.run(one_run(users["user"]))
        assert record.status == "complete"
    alerts = list(BudgetAlert.objects.filter(budget=budget).order_by("threshold").values_list("threshold", flat=True))
    assert alerts == [50, 80, 100]
    from billing.budget_changes import budget_changed

    budget_changed(budget)  # re-checking after an edit raises nothing twice
    assert BudgetAlert.objects.filter(budget=budget).count() == 3
    assert len(sent) == 3 and sent[0].full_url == "http://hooks.example/budget"


class _Reply:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def read(self, size):
        return b""


def test_rebuild_ledger_recomputes_counters_from_records(org, users, ledger):
    budget = make_budget(org, scope="user", target=users["user"], limit_usd=usd(3 * WORST))
    asyncio.run(one_run(users["user"]))
    asyncio.run(one_run(users["user"]))
    key = covering(budget, UsageRecord.objects.first().created_at).scope_key
    asyncio.run(get_ledger().rebuild(key, 0))  # a counter gone wrong
    call_command("rebuild_ledger")
    assert asyncio.run(get_ledger().spent(key)) == 2 * WORST


def test_a_restarted_process_loads_counters_from_records(org, users, ledger):
    make_budget(org, scope="user", target=users["user"], limit_usd=usd(WORST))
    asyncio.run(one_run(users["user"]))
    import billing.ledger as ledger_module
    from billing.ledger import InProcessLedger

    ledger_module._ledger = InProcessLedger()  # a fresh process: empty counters
    with pytest.raises(services.BudgetExceeded):
        asyncio.run(one_run(users["user"]))


def test_ledger_unavailable_refuses_the_request(org, users):
    import billing.ledger as ledger_module
    from billing.ledger_redis import RedisLedger

    make_budget(org, scope="organization", limit_usd="1")
    previous, ledger_module._ledger = ledger_module._ledger, RedisLedger("redis://127.0.0.1:1/0", "{dead}:")
    try:
        with pytest.raises(services.LedgerUnavailable):
            asyncio.run(one_run(users["user"]))
    finally:
        ledger_module._ledger = previous
    assert not UsageRecord.objects.exists()


def test_a_refusal_is_audited(org, users, ledger):
    from audit.models import AuditEvent

    make_budget(org, scope="user", target=users["user"], limit_usd=usd(1000))
    with pytest.raises(services.BudgetExceeded):
        asyncio.run(one_run(users["user"]))
    event = AuditEvent.objects.get(action="budget.exceeded")
    assert event.status == "denied" and event.metadata["scope"] == "user"


def test_a_used_key_cannot_be_deleted_so_the_budgets_above_it_keep_its_spend(org, users, ledger, client):
    # Control: UsageRecord.api_key is PROTECT. With SET_NULL, deleting a child key dropped its usage
    # from its parent's budget at the next rebuild (a budget save, rebuild_ledger, reconcile --fix),
    # giving the parent's hard limit back that much room.
    from django.db.models import ProtectedError
    from django.urls import reverse

    from accounts.actions.keys import delete_api_key
    from accounts.actions.users import create_user
    from accounts.models import APIKey
    from billing.budgets import rebuild_budget

    user = users["user"]
    parent = create_api_key(user, "parent").key
    child = create_api_key(user, "minted", parent=parent).key
    budget = make_budget(org, scope="api_key", target=parent, limit_usd=usd(10 * WORST))
    asyncio.run(one_run(user, child))
    scope = covering(budget, budget.created_at).scope_key
    with pytest.raises(ProtectedError):
        delete_api_key(child)
    with pytest.raises(ProtectedError):
        delete_api_key(parent)  # it would take the minted key with it
    assert APIKey.objects.filter(pk__in=[parent.pk, child.pk]).count() == 2

    root = create_user("root", organization=org, role="admin", password="correct horse battery staple")
    root.is_staff = root.is_superuser = True
    root.save(update_fields=["is_staff", "is_superuser"])
    client.force_login(root)
    page = client.post(reverse("admin:accounts_apikey_delete", args=[child.pk]), {"post": "yes"})
    assert page.status_code == 200 and b"<title>Cannot delete API key" in page.content
    assert APIKey.objects.filter(pk=child.pk).exists()

    rebuild_budget(budget)
    assert asyncio.run(get_ledger().spent(scope)) == WORST  # the child's run still counts against its parent
    unused = create_api_key(user, "unused", parent=parent).key
    delete_api_key(unused)  # a key never used is deleted as before
    assert not APIKey.objects.filter(pk=unused.pk).exists()
