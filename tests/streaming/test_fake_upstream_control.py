"""The fake upstream's control endpoint: what bench/routing.py scripts failures and healing with."""

from __future__ import annotations

import time

import httpx

from tests.support.fake_upstream import FakeUpstream

BODY = {"model": "fake-large", "messages": [{"role": "user", "content": "hi"}], "stream": True}


def test_control_fails_every_request_until_healed_and_counts_what_it_served():
    with FakeUpstream() as server, httpx.Client(base_url=server.url) as client:
        started = time.monotonic()
        failing = client.post("/_control", json={"fail_all": True, "fail_status": 429, "retry_after": 2})
        assert failing.status_code == 200 and failing.json()["config"]["fail_all"] is True
        for _ in range(3):
            refused = client.post("/v1/chat/completions", json=BODY)
            assert refused.status_code == 429 and refused.headers["retry-after"] == "2"
        healed = client.post("/_control", json={"fail_all": False}).json()
        assert healed["first_ok_after_change"] is None  # nothing served since the change
        answered = client.post("/v1/chat/completions", json=BODY)
        assert answered.status_code == 200 and answered.text.endswith("data: [DONE]\n\n")

        stats = client.get("/_control", params={"since": started}).json()
        assert (stats["requests"], stats["ok"], stats["failed"]) == (4, 1, 3)
        assert healed["changed_at"] <= stats["first_ok_after_change"] <= stats["now"]
        assert client.get("/_control", params={"since": stats["now"]}).json()["requests"] == 0


def test_control_refuses_unknown_fields_and_changes_nothing():
    with FakeUpstream() as server, httpx.Client(base_url=server.url) as client:
        refused = client.post("/_control", json={"fail_all": True, "explode": 1})
        assert refused.status_code == 400 and "explode" in refused.json()["error"]["message"]
        assert server.config.fail_all is False
        assert client.post("/v1/chat/completions", json=BODY).status_code == 200


def test_control_reports_when_each_stream_arrived_and_sent_its_first_token():
    with FakeUpstream() as server, httpx.Client(base_url=server.url) as client:
        started = time.monotonic()
        server.configure(ttft=0.05)
        streamed = client.post("/v1/chat/completions", json=BODY)
        plain = client.post("/v1/chat/completions", json={**BODY, "stream": False})
        assert streamed.status_code == plain.status_code == 200
        stats = client.get("/_control", params={"since": started}).json()
        assert stats["requests"] == 2
        [(arrived, first_token)] = stats["streams"]  # the plain answer has no first token
        assert started <= arrived and arrived + 0.05 <= first_token <= stats["now"]
        assert "streams" not in client.post("/_control", json={"ttft": 0}).json()  # a change's answer: no report
