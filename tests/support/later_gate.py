"""Helpers for the tests of work held behind answers (relay.eventloop.later): a serving loop, its
turns, and the quiet moment and hold set per test."""

from __future__ import annotations

import asyncio

import pytest

from relay.eventloop import later


def serving(scenario):
    """Run `scenario` on a loop marked as relay.serve marks its own."""
    async def run():
        later.serve_here()  # as relay.serve does
        return await scenario()

    return asyncio.run(run())


async def turns(count: int = 5) -> None:
    for _ in range(count):
        await asyncio.sleep(0)


async def until(condition) -> None:
    while not condition():
        await asyncio.sleep(0.001)


@pytest.fixture
def hold(settings):
    """Set the quiet moment and the hold (ms); by default long enough to play no part."""
    def set_hold(quiet_ms: int = 60_000, hold_ms: int = 60_000):
        settings.RELAY_CLOSING_QUIET_MS, settings.RELAY_CLOSING_HOLD_MS = quiet_ms, hold_ms

    set_hold()
    return set_hold
