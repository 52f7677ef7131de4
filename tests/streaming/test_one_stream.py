"""Both SSE endpoints stream through one generator: the same keep-alive and the same session count."""

import json

import httpx
import pytest
from prometheus_client import REGISTRY

from agents.api import sse

pytestmark = pytest.mark.django_db(transaction=True)

# The model answers after this long: long beside the heartbeat interval below, so heartbeats go out first.
TTFT = 0.5
INTERVAL = 0.01


def open_sessions() -> float:
    return REGISTRY.get_sample_value("active_sessions") or 0.0


def _last_event(lines: list[str]) -> str:
    return [line for line in lines if line.startswith("data: ")][-1][len("data: "):]


@pytest.mark.parametrize("path, body, ends_with", [
    ("/api/v1/stream", {"query": "slow relay", "agent_type": "general", "model": "fake-large", "cache": False},
     lambda last: json.loads(last)["type"] == "done"),
    ("/v1/chat/completions", {"model": "fake-large", "stream": True,
                              "messages": [{"role": "user", "content": "slow openai"}]},
     lambda last: last == "[DONE]"),
])
def test_a_slow_model_gets_heartbeats_and_counts_as_an_open_session(
        asgi_server, user_key, fake_upstream, upstream_model, monkeypatch, path, body, ends_with):
    monkeypatch.setattr(sse, "HEARTBEAT_SECONDS", INTERVAL)
    fake_upstream.configure(ttft=TTFT)
    before = open_sessions()
    with httpx.Client(base_url=asgi_server.url, timeout=30) as client, client.stream(
            "POST", path, json=body, headers={"Authorization": f"Bearer {user_key}"}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-cache" and response.headers["x-accel-buffering"] == "no"
        lines = response.iter_lines()
        for line in lines:
            if line == ": heartbeat":
                break
            assert "content" not in line or '"content": ""' in line, "a token came before any heartbeat"
        else:
            pytest.fail(f"{path} sent no heartbeat while the model was slow")
        assert open_sessions() == before + 1  # counted while open
        rest = list(lines)
    assert ends_with(_last_event(rest))
    assert open_sessions() == before  # and no longer once it ended
