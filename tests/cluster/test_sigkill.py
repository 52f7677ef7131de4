"""An instance killed with SIGKILL: mid-stream, its reservation expires and its answer becomes
`interrupted`; between an answer and its commit, the closing the ledger holds is written exactly."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from decimal import Decimal

import httpx
import psycopg
import pytest

from tests.cluster.support import (
    MODEL,
    ROOT,
    Instance,
    manage,
    prepare,
    python_in,
    relay_env,
    require_cluster_services,
    scratch_database,
    wait_for,
)
from tests.reconciled import assert_reconciled_in
from tests.support.fake_upstream import FakeUpstream, FakeUpstreamConfig

pytestmark = [pytest.mark.slow, pytest.mark.services]
TTL = 10

LEDGER = """
import json
from asgiref.sync import async_to_sync
from django.utils import timezone
from billing import budgets
from billing.ledger import get_ledger
from billing.models import Budget
scope = budgets.covering(Budget.objects.select_related("organization").get(), timezone.now()).scope_key
"""
RESERVED = LEDGER + 'print(json.dumps({"reserved": async_to_sync(get_ledger().reserved)(scope)}))'
AFTER_TTL = LEDGER + """
from agents.models import Message
from audit.models import AuditEvent
from billing.models import UsageRecord
from agents.jobs import mark_interrupted_messages
from billing.jobs import expire_reservations
marked = mark_interrupted_messages(older_than_seconds=TTL_SECONDS)
expire_reservations()
answer = Message.objects.get(role="assistant", request_id="REQUEST_ID")
usage = UsageRecord.objects.filter(request_id=answer.request_id).first()
print(json.dumps({"marked": marked, "status": answer.status, "reserved": async_to_sync(get_ledger().reserved)(scope),
                  "usage_status": usage and usage.status, "usage_cost": usage and str(usage.cost),
                  "audited": AuditEvent.objects.filter(action="agent.run", metadata__run_id=answer.request_id,
                                                       metadata__status="interrupted").count()}))
""".replace("TTL_SECONDS", str(TTL))


def test_sigkill_mid_stream_leaks_no_reservation_and_marks_the_answer_interrupted(tmp_path, settings):
    require_cluster_services()
    with FakeUpstream(FakeUpstreamConfig(tokens=400, tps=40)) as upstream, scratch_database() as database_url:
        env = relay_env(database_url, settings.REDIS_URL, RELAY_BUDGET_RESERVATION_TTL=TTL)
        key = prepare(env, upstream.base_url)
        instance = Instance(env, tmp_path)
        streaming = threading.Event()
        request_ids = []

        def stream():
            body = {"model": MODEL, "messages": [{"role": "user", "content": "long answer"}], "stream": True}
            try:
                with httpx.stream("POST", f"{instance.url}/v1/chat/completions", json=body, timeout=30,
                                  headers={"Authorization": f"Bearer {key}"}) as response:
                    for line in response.iter_lines():
                        if line.startswith("data: {") and '"content"' in line:
                            request_ids.append(json.loads(line[6:])["id"].removeprefix("chatcmpl-"))
                            streaming.set()
            except httpx.HTTPError:
                pass  # the instance dies under it

        client = threading.Thread(target=stream, daemon=True)
        client.start()
        assert streaming.wait(30), "the stream never started"
        # The runner stores the answer row while the model starts answering; kill once it exists.
        with psycopg.connect(database_url.replace("postgres://", "postgresql://"), autocommit=True) as conn:
            assert wait_for(lambda: conn.execute("SELECT 1 FROM agents_message WHERE request_id = %s AND role = "
                                                 "'assistant'", [request_ids[0]]).fetchone(), 20)
        started = time.monotonic()
        instance.stop(signal.SIGKILL)
        client.join(10)

        assert python_in(env, RESERVED)["reserved"] > 0  # the dead instance still holds its reservation
        time.sleep(max(0.0, TTL + 1 - (time.monotonic() - started)))
        after = python_in(env, AFTER_TTL.replace("REQUEST_ID", request_ids[0]))
        assert Decimal(after.pop("usage_cost")) == 0  # nothing was delivered and settled: nothing charged
        assert after == {"marked": 1, "status": "interrupted", "reserved": 0, "usage_status": "interrupted",
                         "audited": 1}
        assert_reconciled_in(env)  # after the periodic jobs, the books agree


# -- killed between the answer and the commit ----------------------------------------------------

BOOKS = LEDGER + """
from django.db.models import Sum
from agents.models import Message
from audit.models import AuditEvent
from billing.models import UsageRecord
from billing.money import usd_to_nanos
RECOVER
out = {"recovered": recovered, "runs": {}, "held": len(async_to_sync(get_ledger().held_closings)()),
       "counter": async_to_sync(get_ledger().spent)(scope),
       "records": usd_to_nanos(UsageRecord.objects.aggregate(total=Sum("cost"))["total"] or 0)}
for run_id in RUN_IDS:
    answer = Message.objects.get(role="assistant", request_id=run_id)
    usage = list(UsageRecord.objects.filter(request_id=run_id).values("input_tokens", "output_tokens", "cost", "status"))
    events = list(AuditEvent.objects.filter(action="agent.run", metadata__run_id=run_id).values_list("metadata", flat=True))
    out["runs"][run_id] = {"status": answer.status, "content": answer.content, "usage": usage, "events": events}
print(json.dumps(out, default=str))
"""
RECOVERED_BY = {
    "periodic": "from agents.jobs import mark_interrupted_messages\nrecovered = mark_interrupted_messages(0)",
    "reconcile": "recovered = None",  # `manage.py reconcile --fix` ran before
}


def _answers(url: str, key: str) -> dict:
    """One plain and one streamed /v1 answer, each received whole: run id -> (text, usage)."""
    headers = {"Authorization": f"Bearer {key}"}
    body = {"model": MODEL, "messages": [{"role": "user", "content": "a short answer please"}]}
    plain = httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=30)
    assert plain.status_code == 200, plain.text
    got = {plain.json()["id"].removeprefix("chatcmpl-"): (plain.json()["choices"][0]["message"]["content"],
                                                          plain.json()["usage"])}
    text, usage, run_id, done = [], None, None, False
    with httpx.stream("POST", f"{url}/v1/chat/completions", headers=headers, timeout=30,
                      json={**body, "stream": True, "stream_options": {"include_usage": True}}) as streamed:
        for line in streamed.iter_lines():
            if line == "data: [DONE]":
                done = True
            elif line.startswith("data: {"):
                chunk = json.loads(line[6:])
                run_id = chunk["id"].removeprefix("chatcmpl-")
                text += [choice["delta"].get("content") or "" for choice in chunk["choices"]]
                usage = chunk.get("usage") or usage
    assert done and usage, "the stream did not end with its usage and [DONE]"
    got[run_id] = ("".join(text), usage)
    return got


def _cost(usage: dict) -> Decimal:  # the SETUP prices: $0.001 / 1k input, $0.002 / 1k output tokens
    return (Decimal(usage["prompt_tokens"]) * Decimal("0.001") + Decimal(usage["completion_tokens"])
            * Decimal("0.002")) / 1000


@pytest.mark.parametrize("recoverer", ["periodic", "reconcile"])
def test_killed_between_the_answer_and_the_commit_is_recovered_exactly_once(tmp_path, settings, recoverer):
    """The client has every answer whole; the process dies before their closings commit; the
    periodic job (or `reconcile --fix`) writes each closing from the ledger: billed once, audited once."""
    require_cluster_services()
    with FakeUpstream(FakeUpstreamConfig(tokens=12)) as upstream, scratch_database() as database_url:
        ttl = TTL if recoverer == "reconcile" else 900  # reconcile finds answers running past the TTL
        env = relay_env(database_url, settings.REDIS_URL, RELAY_BUDGET_RESERVATION_TTL=ttl)
        key = prepare(env, upstream.base_url)
        instance = Instance(env, tmp_path, module="tests.cluster.hung_closing")
        started = time.monotonic()
        answers = _answers(instance.url, key)
        books = BOOKS.replace("RECOVER", "recovered = None").replace("RUN_IDS", repr(list(answers)))
        before = python_in(env, books)
        # Answered, settled, not committed: the closing records are all the books have of them.
        assert {run["status"] for run in before["runs"].values()} == {"running"}
        assert before["held"] == 2 and before["counter"] > 0 == before["records"]
        instance.stop(signal.SIGKILL)

        if recoverer == "reconcile":
            time.sleep(max(0.0, TTL + 1 - (time.monotonic() - started)))
            found = _reconcile(env, "--json")
            assert [d["kind"] for d in found["discrepancies"]] == ["stuck_message"] * 2  # counters agree
            assert all(d["figures"]["closing_held"] for d in found["discrepancies"])
            fixed = _reconcile(env, "--fix", "--json")
            assert fixed["ok"] and len(fixed["fixed"]) == 2
        after = python_in(env, BOOKS.replace("RECOVER", RECOVERED_BY[recoverer]).replace("RUN_IDS", repr(list(answers))))

        if recoverer == "periodic":
            assert after["recovered"] == 2
        assert after["held"] == 0
        assert after["counter"] == after["records"] == before["counter"]  # billed once: the settle of the answer
        for run_id, (text, usage) in answers.items():
            run = after["runs"][run_id]
            assert run["status"] == "complete" and run["content"] == text
            [record] = run["usage"]  # exactly one usage record, with the tokens and cost the client was told
            assert (record["input_tokens"], record["output_tokens"], record["status"]) == (
                usage["prompt_tokens"], usage["completion_tokens"], "complete")
            assert Decimal(record["cost"]) == _cost(usage) > 0
            [event] = run["events"]  # exactly one agent.run event, marked with who recovered it
            assert event["recovered_by"] == recoverer and event["status"] == "complete"
            assert event["input_tokens"] == usage["prompt_tokens"]
        assert python_in(env, BOOKS.replace("RECOVER", RECOVERED_BY["periodic"])
                         .replace("RUN_IDS", "[]"))["recovered"] == 0  # nothing left, nothing written twice
        assert_reconciled_in(env)
        manage(env, "verify_audit")


def _reconcile(env: dict, *args: str) -> dict:
    done = subprocess.run([sys.executable, "manage.py", "reconcile", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=180)
    return json.loads(done.stdout.strip().splitlines()[-1])
