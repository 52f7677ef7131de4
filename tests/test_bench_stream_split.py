"""bench/stream_latency.py splits the added first token at the upstream: before the model was asked,
after it answered. The split matches a request to the upstream's notes only when it is unambiguous."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
try:
    import stream_latency
finally:
    sys.path.pop(0)


def test_one_stream_splits_the_first_token_at_the_upstream():
    # Sent at 10.000, arrived at 10.004, the upstream's first token at 10.054, the client's at 10.055.
    before, after = stream_latency.split(10.000, 10.055, [[10.004, 10.054]])
    assert before == pytest.approx(0.004) and after == pytest.approx(0.001)


@pytest.mark.parametrize("streams", [[], [[10.004, 10.054], [10.006, 10.056]]])
def test_no_stream_or_several_give_no_split(streams):
    # A retry (two streams) or a call that never reached the upstream cannot be told apart from another's.
    assert stream_latency.split(10.000, 10.055, streams) is None
