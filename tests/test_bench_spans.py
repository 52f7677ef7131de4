"""bench/idle_spans.py: its tracer notes what the traced functions did, and its timeline reads the notes
per request (no Relay, no timing)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
try:
    import idle_spans
finally:
    sys.path.pop(0)

MS = 1_000_000  # the notes' clock is in nanoseconds


def note(ms: float, name: str, kind: str, thread: int = 1, cpu: float | None = None) -> list:
    """A note at `ms`; the thread's CPU time then (ms) is half the wall time unless given."""
    return [int(ms * MS), thread, name, kind, int((ms / 2 if cpu is None else cpu) * MS)]


def request(start: float, *steps) -> list:
    return [note(start, idle_spans.REQUEST, "B"), note(start + 0.5, idle_spans.VIEW, "B"),
            *(note(start + at, name, kind, *rest) for at, name, kind, *rest in steps),
            note(start + 9, idle_spans.REQUEST, "E")]


def test_the_timeline_is_each_spans_median_offset_from_its_own_requests_start():
    notes = [
        *request(100, (2, "open_charge", "B"), (3, "open_charge", "E")),
        *request(200, (4, "open_charge", "B"), (5, "open_charge", "E"), (6, "_trip", "B")),
        *request(300, (3, "open_charge", "B"), (4.5, "open_charge", "E")),
        note(400, idle_spans.REQUEST, "B"), note(400.2, idle_spans.REQUEST, "E"),  # /readyz: not the view's
    ]
    requests = idle_spans.requests_of(list(reversed(notes)))  # notes of several threads arrive unordered
    rows = {(row["span"], row["event"]): row for row in idle_spans.timeline(requests)}

    assert len(requests) == 3
    assert rows[("open_charge", "B#1")]["ms"] == 3 and rows[("open_charge", "E#1")]["ms"] == 4.5
    assert ("_trip", "B#1") not in rows  # in one request of three: not on the path
    assert [row["span"] for row in idle_spans.timeline(requests)][:2] == [idle_spans.REQUEST, idle_spans.VIEW]


def test_the_timeline_counts_the_cpu_of_the_requests_own_thread_from_its_start():
    notes = [*request(100, (2, "open_charge", "B"), (3, "_fresh", "B", 7, 500.0)),
             *request(200, (2, "open_charge", "B"), (3, "_fresh", "B", 7, 900.0))]
    rows = {(row["span"], row["event"]): row for row in idle_spans.timeline(idle_spans.requests_of(notes))}

    # Wall 2 ms after its start, the loop had used 1 ms more CPU (half the clock, in note()).
    assert rows[("open_charge", "B#1")]["ms"] == 2 and rows[("open_charge", "B#1")]["cpu_ms"] == 1
    assert rows[("_fresh", "B#1")]["cpu_ms"] is None  # a DB thread's clock is not the loop's


def test_the_tracer_notes_functions_coroutines_and_generators_wherever_they_were_imported(tmp_path):
    (tmp_path / "traced.py").write_text(textwrap.dedent("""
        async def ask():
            return 1

        async def tokens():
            yield "a"
            yield "b"

        def plain():
            return 2
    """))
    (tmp_path / "caller.py").write_text("from traced import plain\n")  # a copy by name
    script = textwrap.dedent("""
        import asyncio, django, caller, traced
        django.setup()
        async def main():
            assert await traced.ask() == 1
            assert [t async for t in traced.tokens()] == ["a", "b"]
        asyncio.run(main())
        assert caller.plain() == 2
    """)
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "relay.settings", "RELAY_SPANS_DIR": str(tmp_path),
           "RELAY_SPANS": "traced:ask,traced:tokens,traced:plain,traced:missing",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "bench" / "_spans"), str(tmp_path), str(ROOT)])}
    done = subprocess.run([sys.executable, "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "no traced:missing" in done.stderr  # a renamed target is named, not fatal

    [spans] = tmp_path.glob("spans-*.json")
    notes = json.loads(spans.read_text())
    events = [(name, kind) for _, _, name, kind, _ in notes]
    assert events == [("ask", "B"), ("ask", "E"), ("tokens", "B"), ("tokens", "Y"), ("tokens", "E"),
                      ("plain", "B"), ("plain", "E")]
    cpu = [thread_cpu for *_, thread_cpu in notes]
    assert cpu == sorted(cpu) and cpu[0] > 0  # the thread's CPU clock, which only goes forward
