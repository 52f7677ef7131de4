"""What keeps a model call cheap without changing what it records: group commit of closings, cached rules."""

import asyncio
import os
import subprocess
import sys

import pytest
from django.conf import settings

from agents.actions import runs
from audit.maintenance import verify_chain
from audit.models import AuditEvent
from audit.services import appending_together, record
from billing import services
from billing.models import BudgetAlert, ToolUsage, UsageRecord
from tests.billing.conftest import make_budget, rid, seed_prices
from tests.billing.test_charges import IN, OUT, WORST, usd
from tests.conftest import require_postgres, require_redis

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _prices(transactional_db):
    seed_prices()


async def _open(user, key=None):
    return await services.open_charge(request_id=rid(), user=user, api_key=key, model="local-mini",
                                      input_tokens=IN, max_output_tokens=OUT)


async def _close(charge, user, **extra):
    return await services.close_charge(charge, user=user, api_key=None, agent="math", input_tokens=IN,
                                       output_tokens=OUT, status="complete", latency_ms=3, **extra)


def _run(user, charge, tool_records=()):
    """A prepared run as the runner holds it when it closes (its opening rows are not needed here)."""
    import uuid

    from agents.core import RunContext
    from agents.providers.catalog import ModelChoice
    from agents.registry import get_agent
    from agents.runner import PreparedRun, new_request

    request = new_request(user, None, {"agent_type": "math", "query": "1+1"})
    ctx = RunContext(query="1+1", user=user, api_key=None)
    ctx.tool_records = list(tool_records)
    return PreparedRun(request=request, agent=get_agent("math"), model=ModelChoice(name="local-mini", kind="local"),
                       ctx=ctx, charge=charge, input_tokens=IN, max_tokens=OUT, message_id=str(uuid.uuid4()))


async def _close_run(run, answer="2"):
    return await runs.close_run(run, runs.Ending(status="complete", answer=answer, input_tokens=IN,
                                                 output_tokens=OUT, latency_ms=3))


# Below the least a request may reserve (input + one output token): refused outright.
TOO_SMALL = usd(IN * 100)


def test_closings_that_arrive_together_commit_together(users, ledger, monkeypatch):
    user, sizes = users["user"], []
    batch = runs._CLOSINGS.write_batch
    monkeypatch.setattr(runs._CLOSINGS, "write_batch", lambda writes: sizes.append(len(writes)) or batch(writes))

    async def scenario():
        prepared = [_run(user, await _open(user), [{"name": "sympy", "duration_ms": 2}]) for _ in range(20)]
        ending = runs.Ending(status="complete", answer="2", input_tokens=IN, output_tokens=OUT, latency_ms=3)
        # Each settles in the ledger on its own; the twenty commits that follow reach the database together.
        closings = [await runs.settle_run(run, ending) for run in prepared]
        return prepared, await asyncio.gather(*(runs.commit_run(closing) for closing in closings))

    prepared, records = asyncio.run(scenario())
    assert sizes == [20]  # one transaction for all twenty
    assert UsageRecord.objects.count() == 20 and all(r.pk for r in records)
    assert ToolUsage.objects.count() == 20
    # Each run's own audit event, chained in one append: the chain verifies.
    events = AuditEvent.objects.filter(action="agent.run")
    assert sorted(events.values_list("resource", flat=True)) == sorted(f"message:{r.message_id}" for r in prepared)
    assert verify_chain().ok


def test_a_bad_write_fails_only_its_own_caller(users, ledger, monkeypatch):
    user, store = users["user"], runs._store_answers

    def store_unless_broken(closings):  # a batch holding the broken answer fails whole, then each alone
        if any(closing.data["answer"]["content"] == "broken" for closing in closings):
            raise ValueError("this answer cannot be stored")
        store(closings)

    monkeypatch.setattr(runs, "_store_answers", store_unless_broken)

    async def scenario():
        prepared = [_run(user, await _open(user)) for _ in range(4)]
        twice = prepared[0]  # closed twice in the same batch: the second gets the first's record
        return await asyncio.gather(_close_run(twice), _close_run(twice), _close_run(prepared[1], "broken"),
                                    *(_close_run(run) for run in prepared[2:]), return_exceptions=True)

    first, again, failed, third, fourth = asyncio.run(scenario())
    assert isinstance(failed, ValueError)
    assert first.pk == again.pk
    assert set(UsageRecord.objects.values_list("pk", flat=True)) == {first.pk, third.pk, fourth.pk}
    assert AuditEvent.objects.filter(action="agent.run").count() == 3  # none for the failed one, none twice
    assert verify_chain().ok


def test_events_appended_together_are_chained_in_order_or_not_at_all(users):
    from django.db import transaction

    with transaction.atomic(), appending_together():
        made = [record("test.together", resource=f"n:{n}") for n in range(3)]
        assert all(event.pk is None for event in made)  # not written before the block ends
    assert [e.sequence for e in made] == [made[0].sequence + n for n in range(3)]
    assert made[1].prev_hash == made[0].hash and made[2].prev_hash == made[1].hash

    with pytest.raises(RuntimeError), transaction.atomic(), appending_together():
        record("test.together", resource="lost")
        raise RuntimeError("the transaction rolls back")
    assert not AuditEvent.objects.filter(resource="lost").exists()
    assert verify_chain().ok


def test_prices_and_budgets_are_read_once_until_they_change(org, users, ledger, sql):
    user = users["user"]
    asyncio.run(_open(user))  # loads the copies
    sql.clear()
    charge = asyncio.run(_open(user))
    assert charge.granted_nanos == services.UNLIMITED
    assert not [query for query in sql if "billing_" in query]
    make_budget(org, limit_usd=TOO_SMALL)  # a new hard budget binds on the very next request
    with pytest.raises(services.BudgetExceeded):
        asyncio.run(_open(user))


def test_a_budget_created_by_another_process_binds_at_once(org, users, ledger):
    require_redis()
    require_postgres()
    user = users["user"]
    asyncio.run(_open(user))  # this process now holds "no budget covers this user"
    db = settings.DATABASES["default"]
    env = {**os.environ, "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"}
    script = ("from decimal import Decimal; from billing.models import Budget; "
              f"Budget.objects.create(organization_id={org.pk}, scope='organization', period='monthly', "
              f"limit_usd=Decimal('{TOO_SMALL}'), hard=True)")
    subprocess.run([sys.executable, "manage.py", "shell", "-c", script], check=True, env=env, cwd=settings.BASE_DIR,
                   capture_output=True, timeout=60)
    with pytest.raises(services.BudgetExceeded):
        asyncio.run(_open(user))


def test_thresholds_are_looked_up_only_when_one_is_crossed(org, users, ledger, sql):
    user = users["user"]
    make_budget(org, limit_usd=usd(4 * WORST), hard=False, thresholds=[50])

    def alert_queries():
        charge = asyncio.run(_open(user))
        sql.clear()
        asyncio.run(_close(charge, user))
        return [query for query in sql if "billing_budget" in query]

    assert alert_queries() == []  # 25%: nothing crossed, no budget read
    assert alert_queries() != []  # 50%: crossed, the alert is raised
    assert BudgetAlert.objects.get().threshold == 50
    assert alert_queries() == []


def test_the_opening_commit_does_not_wait_for_its_flush_and_the_closing_does(users, ledger, sql):
    """The opening stands before every first token; the closing (money and audit) stays durable
    at its commit, and its flush makes the opening's rows durable with it (WAL is flushed in order)."""
    require_postgres()
    import uuid

    from agents.models import Message

    user = users["user"]
    run = _run(user, None)
    opening = runs.Opening(run.request, str(uuid.uuid4()), run.message_id, "math", "local-mini")
    asyncio.run(runs.open_run(opening))
    opened = [q for q in sql if "agents_" in q or "synchronous_commit" in q]
    assert Message.objects.get(pk=run.message_id).status == Message.Status.RUNNING
    assert len(opened) == 1  # one round trip: its own transaction, the setting, the rows
    assert opened[0].startswith("BEGIN; SET LOCAL synchronous_commit TO OFF; ") and opened[0].endswith("; COMMIT")
    sql.clear()
    asyncio.run(_close_run(_run(user, asyncio.run(_open(user)))))
    assert not [q for q in sql if "synchronous_commit" in q]
