"""bench/cpu_profile.py: its sampler counts the loop's stacks per phase, only in `relay.serve`, and its
figures turn samples into CPU milliseconds per request (no Relay, no timing)."""

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
    import cpu_profile
finally:
    sys.path.pop(0)

BURN = textwrap.dedent("""
    import os, signal, time

    def burn(seconds):
        until = time.process_time() + seconds
        while time.process_time() < until:
            sum(range(1000))

    def first():
        burn(0.3)

    def second():
        burn(0.3)

    first()
    if signal.getsignal(signal.SIGUSR2) is not signal.SIG_DFL:  # sampled: the end of phase 1
        os.kill(os.getpid(), signal.SIGUSR2)
    second()
""")


def run_sampled(tmp_path: Path, *argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "RELAY_SAMPLE_DIR": str(tmp_path),
           "PYTHONPATH": os.pathsep.join([str(ROOT / "bench" / "_sampler"), str(ROOT)])}
    return subprocess.run([sys.executable, "-c", BURN, *argv], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


def test_the_sampler_counts_each_phases_stacks_apart_with_the_phases_cpu(tmp_path):
    done = run_sampled(tmp_path, "relay.serve")  # as the sampled server's command line names it
    assert done.returncode == 0, done.stderr

    phases = [json.loads(path.read_text()) for path in sorted(tmp_path.glob("samples-*.json"))]
    assert len(phases) == 2  # SIGUSR2, then the exit
    first, second = ({stack[-2] for stack, _ in phase["stacks"] if len(stack) > 1} for phase in phases)
    assert "<string>:first" in first and "<string>:second" not in first
    assert "<string>:second" in second and "<string>:first" not in second
    for phase in phases:
        assert 0.25 < phase["cpu_s"] < 5  # its own CPU, not the process's since it started
        assert sum(count for _, count in phase["stacks"]) > 10


def test_only_relay_serve_is_sampled(tmp_path):
    # An interval timer survives exec: a child (manage.py migrate, a shell) would die of SIGPROF.
    done = run_sampled(tmp_path)
    assert done.returncode == 0, done.stderr  # and not killed by SIGPROF
    assert not list(tmp_path.glob("samples-*.json"))


def test_a_functions_cpu_per_request_counts_it_once_per_sample_however_deep_it_recurs():
    phase = {"cpu_s": 0.8, "stacks": [[["serve", "view", "parse", "parse"], 3], [["serve", "view"], 1],
                                      [["serve", "closing"], 4]]}
    figures = cpu_profile.per_request(phase, requests=100)  # 8 samples of 0.1 s: 1 ms per sample per request

    assert figures == {"serve": 8.0, "view": 4.0, "parse": 3.0, "closing": 4.0}
    assert cpu_profile.per_request({"cpu_s": 0.5, "stacks": []}, requests=10) == {}


def test_the_table_ranks_by_cpu_after_idle_and_leaves_out_the_loops_own_frames():
    back = {"relay/serve.py:main": 9.0, "agents/runner.py:prepare": 1.0, "relay/api/async_views.py:wrapper": 2.0}
    idle = {"relay/serve.py:main": 15.0, "agents/runner.py:prepare": 3.0, "agents/router/calls.py:stream": 0.5}
    rows = cpu_profile.table({"back_to_back": back, "idle": idle}, top=10)

    assert [row["function"] for row in rows] == ["agents/runner.py:prepare", "agents/router/calls.py:stream",
                                                 "relay/api/async_views.py:wrapper"]
    assert rows[0] == {"function": "agents/runner.py:prepare", "back_to_back_ms": 1.0, "idle_ms": 3.0, "ratio": 3.0}
    assert rows[1]["ratio"] is None  # never sampled back to back
    assert len(cpu_profile.table({"back_to_back": back, "idle": idle}, top=1)) == 1
