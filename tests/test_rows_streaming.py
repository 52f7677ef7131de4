"""relay.http.RowsStreamingResponse: an export's rows streamed under ASGI in batches, not read whole first.

Control: its __aiter__. Without it, Django's ASGI handler reads a sync iterator into one list before
sending a byte, and warns (django/http/response.py, StreamingHttpResponse.__aiter__).
"""

from __future__ import annotations

import asyncio
import json
import threading
import warnings

import pytest
from django.urls import reverse

from accounts.actions.keys import create_api_key
from audit import actions
from audit.models import AuditEvent
from audit.services import record
from relay.http import RowsStreamingResponse
from tests.support.asgi import asgi_request, body_of


def test_the_first_batch_is_sent_before_the_rest_is_read_all_on_one_thread_off_the_loop():
    read_on = []

    def rows():
        for number in range(1000):
            read_on.append(threading.get_ident())
            yield f"{number}\n"

    response = RowsStreamingResponse(rows())

    async def consume():
        parts = aiter(response)
        first = await anext(parts)
        read_before_the_first_was_sent = len(read_on)
        return first, read_before_the_first_was_sent, [part async for part in parts], threading.get_ident()

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first, read_first, rest, loop_thread = asyncio.run(consume())
    assert first == b"0\n" and read_first == RowsStreamingResponse.BATCH < 1000
    assert b"".join([first, *rest]) == "".join(f"{n}\n" for n in range(1000)).encode()
    assert len(set(read_on)) == 1 and read_on[0] != loop_thread
    assert [str(w.message) for w in caught] == []


def test_under_wsgi_and_the_test_client_it_is_the_iterator_as_given():
    response = RowsStreamingResponse(f"{n}\n" for n in range(3))
    assert not response.is_async and b"".join(response) == b"0\n1\n2\n"


@pytest.mark.django_db(transaction=True)
def test_the_audit_export_streams_every_event_through_relays_asgi_handler(users, monkeypatch):
    monkeypatch.setattr(RowsStreamingResponse, "BATCH", 7)  # several batches from a few events
    for number in range(30):
        record(actions.DOCUMENT_SHARED, actor=users["user"], resource=f"document:{number}")
    secret = create_api_key(users["admin"], "export").secret
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sent = asyncio.run(asgi_request("GET", reverse("audit-export"), {"Authorization": f"Bearer {secret}"},
                                        query=f"action={actions.DOCUMENT_SHARED}"))
    assert sent[0]["status"] == 200, body_of(sent)[:300]
    exported = [json.loads(line) for line in body_of(sent).decode().splitlines()]
    assert [event["resource"] for event in exported] == [f"document:{number}" for number in range(30)]
    assert [str(w.message) for w in caught if "synchronous iterators" in str(w.message)] == []
    assert AuditEvent.objects.filter(action=actions.DATA_EXPORTED, actor=users["admin"]).count() == 1
