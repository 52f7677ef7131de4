"""A drained instance closes what it holds open before it exits."""

from __future__ import annotations

import pytest

from tests.cluster.support import Instance, chat, prepare, relay_env, require_cluster_services, scratch_database
from tests.support.fake_upstream import FakeUpstream

pytestmark = [pytest.mark.slow, pytest.mark.services]


def test_a_drained_instance_closes_its_pooled_upstream_connections(tmp_path, settings):
    require_cluster_services()
    with FakeUpstream() as upstream, scratch_database() as database_url:
        env = relay_env(database_url, settings.REDIS_URL)
        key = prepare(env, upstream.base_url)
        instance = Instance(env, tmp_path)
        assert chat(instance.url, key).status_code == 200  # leaves a pooled keep-alive connection upstream

        assert instance.stop() == 0

        log = next(tmp_path.glob("relay-*.log")).read_text()
        assert "Unclosed" not in log, log[-2000:]  # aiohttp's complaint about a session left open at exit
