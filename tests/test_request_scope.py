"""relay.eventloop.unfinished: what a request opened is closed at its end unless its own code took it over."""

import asyncio

from relay.eventloop import unfinished


def test_the_scope_closes_what_was_not_taken_over_even_when_a_closer_fails():
    closed = []

    async def closer(name, fail=False):
        closed.append(name)
        if fail:
            raise RuntimeError(name)

    async def scenario():
        async with unfinished.request_scope():
            async def view():  # a task of the request (the view's), sharing its scope
                unfinished.register(lambda: closer("left open"))
                unfinished.register(lambda: closer("failing", fail=True))
                taken = unfinished.register(lambda: closer("taken over"))
                taken()
                taken()  # twice is harmless

            await asyncio.create_task(view())
        unfinished.register(lambda: closer("outside a request"))()  # no scope: nothing to do

    asyncio.run(scenario())
    assert sorted(closed) == ["failing", "left open"]
