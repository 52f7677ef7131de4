"""Fixtures shared by the agents tests."""

from tests.streaming.conftest import fake_upstream, upstream_model  # noqa: F401 (fixtures for live tests)
