"""Work held behind answers (relay.eventloop.later): a closing's commit waits while a request of its
loop has not answered yet (its response has not ended, or a stream has sent no event past its
start) and until no request has been starting for RELAY_CLOSING_QUIET_MS (a stream's own closing:
counted from that stream's end), and no longer than
RELAY_CLOSING_HOLD_MS, then all that waits goes together; a turn waiting for it, and a draining
server, start it at once. Other later work never waits. The events asserted are the order of
things, not their timing."""

from __future__ import annotations

import asyncio
import gc
import warnings

from relay.eventloop import later
from tests.support.later_gate import serving as _serving
from tests.support.later_gate import turns as _turns
from tests.support.later_gate import until as _until


def test_held_work_starts_once_no_request_is_before_its_answer(hold):
    hold(quiet_ms=1)
    events = []

    async def closing():
        events.append("closing")

    async def scenario():
        first, second = later.answering(), later.answering()
        assert later.later(closing(), behind_answers=True)
        await _turns()
        events.append("first answered")
        first()
        first()  # idempotent: one request, one mark
        await asyncio.sleep(0.01)  # ten quiet moments' worth: the second request is still before its answer
        events.append("second answered")
        second()
        await asyncio.wait_for(_until(lambda: "closing" in events), 10)  # the quiet moment lasted
        assert await later.drain(10) == 0

    _serving(scenario)
    assert events == ["first answered", "second answered", "closing"]


def test_a_quiet_moment_counts_only_once_it_has_lasted(hold):
    """The client's next request, sent the moment it has its answer, keeps the closing waiting."""
    hold(quiet_ms=1)
    events = []

    async def closing():
        events.append("closing")

    async def scenario():
        answered = later.answering()
        assert later.later(closing(), behind_answers=True)  # the runner holds its closing before it answers
        answered()
        following = later.answering()  # the next request, within the quiet moment
        await asyncio.sleep(0.01)
        events.append("next answered")
        following()
        await asyncio.wait_for(_until(lambda: "closing" in events), 10)
        assert await later.drain(10) == 0

    _serving(scenario)
    assert events == ["next answered", "closing"]


def test_work_held_with_no_request_starting_still_waits_for_the_quiet_moment(hold):
    """A stream's closing is held after its mark ended (at its first token): the next stream, arriving
    at once, is not made to share its start with that commit."""
    hold(quiet_ms=1)
    events = []

    async def closing():
        events.append("closing")

    async def scenario():
        assert later.later(closing(), behind_answers=True)
        arriving = later.answering()
        await asyncio.sleep(0.01)
        events.append("answered")
        arriving()
        await asyncio.wait_for(_until(lambda: "closing" in events), 10)
        assert await later.drain(10) == 0

    _serving(scenario)
    assert events == ["answered", "closing"]


def test_what_waits_goes_together_at_the_oldest_works_hold(hold):
    """Released one by one, each closing would commit alone and meet a request of its own."""
    hold(hold_ms=20)
    events = []

    def closing(name):
        async def work():
            events.append(name)

        return work()

    async def ticking():
        while len([e for e in events if e != "tick"]) < 2:
            events.append("tick")
            await asyncio.sleep(0)

    async def scenario():
        later.answering()  # a request that never answers: only the hold lets them go
        assert later.later(closing("first"), behind_answers=True)
        await asyncio.sleep(0.01)
        assert later.later(closing("second"), behind_answers=True)
        await asyncio.wait_for(ticking(), 10)
        assert await later.drain(10) == 0

    _serving(scenario)
    ran = [e for e in events if e != "tick"]
    assert ran == ["first", "second"]
    assert events[events.index("first") + 1] == "second"  # in one turn of the loop: one batch


def test_held_work_goes_at_its_hold_while_more_keeps_coming(hold):
    """The hold counts from the oldest held work: closings arriving all the time do not push it back."""
    hold(hold_ms=20)
    events = []

    def closing(number):
        async def work():
            events.append(number)

        return work()

    async def scenario():
        later.answering()  # a request that never answers
        for number in range(200):  # a second of closings, one every 5 ms
            if events:
                break
            assert later.later(closing(number), behind_answers=True)
            await asyncio.sleep(0.005)
        assert await later.drain(10) == 0
        return number

    held = _serving(scenario)
    assert events and events[0] == 0 and held < 199  # the first went while more kept coming


def test_held_work_goes_at_its_hold_while_requests_keep_starting(hold):
    hold(hold_ms=20)
    events = []

    async def closing():
        events.append("closing")

    async def scenario():
        answered = later.answering()
        assert later.later(closing(), behind_answers=True)
        for _ in range(200):  # a second of overlapping requests, one starting every 5 ms
            if events:
                break
            following = later.answering()
            answered()
            answered = following
            await asyncio.sleep(0.005)
        events.append("requests stopped")
        answered()
        assert await later.drain(10) == 0

    _serving(scenario)
    assert events == ["closing", "requests stopped"]


def test_work_held_with_no_request_goes_after_the_quiet_moment(hold):
    hold(quiet_ms=1)  # the hold (a minute) plays no part
    events = []

    async def closing():
        events.append("closing")

    async def scenario():
        assert later.later(closing(), behind_answers=True)
        await asyncio.wait_for(_until(lambda: events), 10)
        events.append("no drain needed")
        assert await later.drain(10) == 0

    _serving(scenario)
    assert events == ["closing", "no drain needed"]


def test_no_quiet_moment_starts_work_held_with_no_request_at_once(hold):
    hold(quiet_ms=0)
    events = []

    async def closing():
        events.append("closing")

    async def scenario():
        assert later.later(closing(), behind_answers=True)
        await _turns()
        events.append("a moment later")
        assert await later.drain(10) == 0

    _serving(scenario)
    assert events == ["closing", "a moment later"]


def test_a_finished_serving_loop_is_not_kept():
    async def scenario():
        later.serve_here()

    before = len(later._gates)
    asyncio.run(scenario())
    gc.collect()
    assert len(later._gates) == before


def test_no_hold_starts_held_work_at_once(hold):
    hold(hold_ms=0)
    events = []

    async def closing():
        events.append("closing")

    async def scenario():
        answered = later.answering()
        assert later.later(closing(), behind_answers=True)
        await _turns()
        events.append("answered")
        answered()
        assert await later.drain(10) == 0

    _serving(scenario)
    assert events == ["closing", "answered"]


def test_other_later_work_does_not_wait(hold):
    events = []

    async def release():
        events.append("released")

    async def scenario():
        answered = later.answering()
        assert later.later(release())  # a routing release: capacity, not a commit
        await _turns()
        events.append("answered")
        answered()
        assert await later.drain(10) == 0

    _serving(scenario)
    assert events == ["released", "answered"]


def test_held_work_waits_no_longer_than_the_hold(hold):
    hold(hold_ms=10)
    events = []

    async def closing():
        events.append("closing")

    async def scenario():
        answered = later.answering()  # a request that never sends (a slow model, say)
        assert later.later(closing(), behind_answers=True)
        await asyncio.wait_for(_until(lambda: events), 10)
        events.append("answered")
        answered()
        assert await later.drain(10) == 0

    _serving(scenario)
    assert events == ["closing", "answered"]


def test_the_turn_that_waits_for_a_closing_starts_it(hold):
    events = []

    async def closing():
        events.append("closing")

    async def scenario():
        answered = later.answering()  # the follow-up turn itself: before its first byte
        assert later.later(closing(), key="conversation-1", behind_answers=True)
        await asyncio.wait_for(later.settled("conversation-1"), 10)
        events.append("settled")
        answered()
        assert await later.drain(10) == 0

    _serving(scenario)
    assert events == ["closing", "settled"]


def test_a_draining_server_starts_held_work(hold):
    events = []

    async def closing():
        events.append("closing")

    async def scenario():
        later.answering()  # a request still starting when the server stops
        assert later.later(closing(), behind_answers=True)
        assert await asyncio.wait_for(later.drain(10), 10) == 0

    _serving(scenario)
    assert events == ["closing"]


def test_held_work_cancelled_while_waiting_never_runs_and_leaves_no_warning(hold):
    events = []

    async def closing():
        events.append("closing")

    async def scenario():  # cancelled while held, as drain cancels what outlives its timeout
        later.answering()
        assert later.later(closing(), behind_answers=True)
        await _turns()
        (task,) = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    with warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
        _serving(scenario)
        gc.collect()
    assert events == []
    assert not [w for w in warned if "never awaited" in str(w.message)]


def test_outside_a_serving_loop_nothing_is_marked_or_held():
    async def scenario():
        answered = later.answering()
        answered()

        async def closing():
            return None

        work = closing()
        assert not later.later(work, behind_answers=True)  # the caller awaits it itself
        await work

    asyncio.run(scenario())


def test_held_work_cancelled_before_it_starts_leaves_no_warning(hold):

    async def closing():
        return None

    async def scenario():
        later.answering()
        assert later.later(closing(), behind_answers=True)
        (task,) = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        task.cancel()  # before its first step
        await asyncio.gather(task, return_exceptions=True)

    with warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
        _serving(scenario)
        gc.collect()  # an unawaited coroutine warns when it is collected
    assert not [w for w in warned if "never awaited" in str(w.message)]


def test_work_held_after_the_drain_began_does_not_wait(hold):
    events = []

    async def closing():
        events.append("closing")

    async def scenario():
        later.answering()  # a request the shutdown has not finished
        assert await later.drain(10) == 0
        assert later.later(closing(), behind_answers=True)  # a closing that request makes meanwhile
        await _turns()
        events.append("a moment later")
        assert await asyncio.wait_for(later.drain(10), 10) == 0

    _serving(scenario)
    assert events == ["closing", "a moment later"]
