"""An instance killed with SIGKILL mid-stream: its reservation expires, its answer becomes `interrupted`."""

from __future__ import annotations

import json
import signal
import threading
import time
from decimal import Decimal

import httpx
import psycopg
import pytest

from tests.cluster.support import (
    MODEL,
    Instance,
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
