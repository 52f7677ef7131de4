"""The fake upstream fixtures of tests/streaming, shared with the abuse tests."""

from tests.streaming.conftest import fake_upstream, upstream_model  # noqa: F401  (pytest fixtures)
