"""Escape suite for agents.sandbox: each test checks what an attacker (or a user) would try."""
from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import time
import uuid

import pytest

from agents import sandbox
from agents.sandbox import SandboxLimits, SandboxUnavailable, run_python

FAST = SandboxLimits(wall_seconds=5.0, cpu_seconds=3)
# A wait that ends on an event, or a ceiling on a run with a much shorter limit: generous, because it
# only matters when the behaviour under test is broken, and CI machines are loaded.
WAIT = 30


def require_sandbox() -> None:
    """Skip when bubblewrap is unusable, but fail when RELAY_REQUIRE_SERVICES=1."""
    ok, reason = sandbox.sandbox_available()
    if ok:
        return
    if os.environ.get("RELAY_REQUIRE_SERVICES") == "1":
        pytest.fail(f"RELAY_REQUIRE_SERVICES=1 but the code sandbox is unavailable: {reason}")
    pytest.skip(f"bubblewrap sandbox unavailable: {reason}")


@pytest.fixture
def sandboxed():
    require_sandbox()


def _set_allow(monkeypatch, allowed: bool) -> None:
    if allowed:
        monkeypatch.setenv("RELAY_ALLOW_UNSANDBOXED_CODE", "1")
    else:
        monkeypatch.delenv("RELAY_ALLOW_UNSANDBOXED_CODE", raising=False)
    try:
        from django.conf import settings
        if settings.configured:
            monkeypatch.setattr(settings, "RELAY_ALLOW_UNSANDBOXED_CODE", allowed, raising=False)
    except ImportError:
        pass


def _pids_named(comm: str) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/comm") as f:
                    if f.read().strip() == comm:
                        pids.append(int(entry))
            except OSError:
                pass
    return pids


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


async def _wait_until(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.05)
    return predicate()


def _marker() -> str:
    return "rx" + uuid.uuid4().hex[:12]  # fits in the 15-char comm


def _set_comm(mark: str) -> str:
    # Tag the sandboxed processes so the host side can find them (children inherit the name).
    # prctl, not /proc/self/comm: after the uid drop the process is not dumpable.
    return f"import ctypes\nctypes.CDLL(None).prctl(15, {mark.encode()!r}, 0, 0, 0)\n"


# --- basics -----------------------------------------------------------------------------------

@pytest.mark.asyncio
async def test_prints_result(sandboxed):
    r = await run_python("print(sum(range(10)))")
    assert (r.stdout, r.exit_code, r.killed_reason, r.sandboxed) == ("45\n", 0, None, True)
    assert not r.timed_out and not r.output_truncated


@pytest.mark.asyncio
async def test_exit_code_and_stderr_reported(sandboxed):
    r = await run_python("import sys\nprint('boom', file=sys.stderr)\nraise SystemExit(3)")
    assert r.exit_code == 3 and "boom" in r.stderr and r.killed_reason is None
    r = await run_python("1/0")
    assert r.exit_code == 1 and "ZeroDivisionError" in r.stderr and 'main.py", line 1' in r.stderr


@pytest.mark.asyncio
async def test_stdin_is_passed(sandboxed):
    r = await run_python("print(input().upper())", stdin="hello\n")
    assert r.stdout == "HELLO\n"


@pytest.mark.asyncio
async def test_environment_has_no_parent_secrets(sandboxed, monkeypatch):
    monkeypatch.setenv("RELAY_LLM_API_KEY", "sk-very-secret")
    r = await run_python("import os, json; print(json.dumps(dict(os.environ)))")
    env = json.loads(r.stdout)
    assert "sk-very-secret" not in r.stdout and "RELAY_LLM_API_KEY" not in env
    assert env["HOME"] == "/tmp" and env["LANG"] == "C.UTF-8"


# --- network ----------------------------------------------------------------------------------

NET_PROBE = """
import socket
for addr in [("127.0.0.1", 5432), ("1.1.1.1", 53)]:
    try:
        socket.create_connection(addr, timeout=2).close()
        print("CONNECTED", addr)
    except OSError as e:
        print("blocked", addr, type(e).__name__)
"""


@pytest.mark.asyncio
async def test_no_network(sandboxed):
    r = await run_python(NET_PROBE, limits=FAST)
    assert "CONNECTED" not in r.stdout
    assert r.stdout.count("blocked") == 2, r.stderr


@pytest.mark.asyncio
async def test_host_postgres_unreachable_even_though_it_listens(sandboxed):
    try:  # only meaningful when the host really listens there
        socket.create_connection(("127.0.0.1", 5432), timeout=1).close()
    except OSError:
        pytest.skip("nothing listens on host 127.0.0.1:5432")
    r = await run_python(NET_PROBE, limits=FAST)
    assert "blocked ('127.0.0.1', 5432)" in r.stdout


@pytest.mark.asyncio
async def test_no_dns(sandboxed):
    code = ("import socket\ntry:\n    print(socket.getaddrinfo('example.com', 80))\n"
            "except OSError as e:\n    print('dns failed', type(e).__name__)")
    r = await run_python(code, limits=FAST)
    assert r.stdout.startswith("dns failed"), r.stdout + r.stderr


# --- filesystem -------------------------------------------------------------------------------

@pytest.mark.asyncio
async def test_host_secrets_and_trees_invisible(sandboxed):
    code = """
import json, os
out = {p: os.path.exists(p) for p in ["/work", "/root", "/home", "/etc/shadow", "/etc/passwd"]}
try:
    open("/etc/shadow").read(); out["shadow_read"] = True
except OSError:
    out["shadow_read"] = False
out["root_listing"] = sorted(os.listdir("/"))
print(json.dumps(out))
"""
    out = json.loads((await run_python(code)).stdout)
    assert out["shadow_read"] is False
    assert not any(out[p] for p in ["/work", "/root", "/home", "/etc/shadow", "/etc/passwd"])
    assert "work" not in out["root_listing"] and "root" not in out["root_listing"]


@pytest.mark.asyncio
async def test_system_dirs_read_only(sandboxed):
    code = """
import os
for path in ["/usr/evil", "/evil", "/etc/evil", "/opt/venv/evil", "/usr/bin/python3"]:
    try:
        with open(path, "a") as f:
            f.write("x")
        print("WROTE", path)
    except OSError as e:
        print("denied", path)
"""
    r = await run_python(code)
    assert "WROTE" not in r.stdout and r.stdout.count("denied") == 5, r.stderr


@pytest.mark.asyncio
async def test_tmp_is_private_and_ephemeral(sandboxed):
    name = f"relay-sbx-{uuid.uuid4().hex}"
    r = await run_python(f"open('/tmp/{name}', 'w').write('hi')\nprint(open('/tmp/{name}').read())")
    assert r.stdout == "hi\n" and r.exit_code == 0
    assert not os.path.exists(f"/tmp/{name}")  # not on the host
    r = await run_python(f"import os; print(os.path.exists('/tmp/{name}'))")
    assert r.stdout == "False\n"  # nor in the next run


@pytest.mark.asyncio
async def test_sympy_and_extra_read_only_binds(sandboxed, tmp_path):
    (tmp_path / "relaymod.py").write_text("VALUE = 42\n")
    tmp_path.chmod(0o755)  # binds must be readable by the unprivileged sandbox uid
    code = (f"import sys; sys.path.insert(0, {str(tmp_path)!r})\n"
            "import relaymod, sympy\n"
            "print(relaymod.VALUE, sympy.factor('x**2 - 1'))\n"
            f"open({str(tmp_path / 'w')!r}, 'w')")
    r = await run_python(code, extra_ro_binds=[str(tmp_path)], limits=FAST)
    assert r.stdout == "42 (x - 1)*(x + 1)\n", r.stderr
    assert "Read-only file system" in r.stderr and not (tmp_path / "w").exists()
    with pytest.raises(ValueError):
        await run_python("pass", extra_ro_binds=["relative/path"])


# --- resource limits --------------------------------------------------------------------------

@pytest.mark.asyncio
async def test_fork_bomb_contained(sandboxed):
    mark = _marker()
    code = (_set_comm(mark) + "import os\n"
            "while True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n")
    t0 = time.monotonic()
    r = await run_python(code, limits=SandboxLimits(wall_seconds=2.0, cpu_seconds=5))
    assert time.monotonic() - t0 < WAIT  # the wall limit stopped it: a fork bomb never ends by itself
    # With enough cores its processes together pass the run's CPU budget before the wall limit.
    assert r.exit_code is None and r.killed_reason in ("timeout", "cpu")
    assert await _wait_until(lambda: not [p for p in _pids_named(mark) if _alive(p)], WAIT)
    assert subprocess.run(["true"], timeout=5).returncode == 0  # the host can still spawn


@pytest.mark.asyncio
async def test_process_count_limited(sandboxed):
    code = """
import os, time
n = 0
try:
    while n < 500:
        if os.fork() == 0:
            time.sleep(5); os._exit(0)
        n += 1
except OSError as e:
    print(n, e.errno)
"""
    r = await run_python(code, limits=SandboxLimits(max_processes=16))
    n, errno_ = map(int, r.stdout.split())
    assert n < 16 and errno_ == 11  # EAGAIN from RLIMIT_NPROC


@pytest.mark.asyncio
async def test_memory_limit(sandboxed):
    t0 = time.monotonic()
    r = await run_python("b = bytearray(10 * 1024 ** 3)\nprint('ALLOCATED')")
    assert time.monotonic() - t0 < WAIT
    assert "ALLOCATED" not in r.stdout and r.exit_code != 0
    assert r.killed_reason == "memory" and "MemoryError" in r.stderr


@pytest.mark.asyncio
async def test_memory_limit_caps_the_whole_run_not_each_process(sandboxed):
    # RLIMIT_AS binds one process: three children of 300 MB each would hold 900 MB under a
    # 512 MB limit. The limit is on the run, so the sandbox is stopped as a whole.
    code = """
import os, time
children = []
for _ in range(3):
    pid = os.fork()
    if pid == 0:
        block = bytearray(300 * 1024 * 1024)
        time.sleep(5)
        os._exit(0)
    children.append(pid)
for pid in children:
    os.waitpid(pid, 0)
print('ALL HELD')
"""
    r = await run_python(code, limits=SandboxLimits(memory_bytes=512 * 1024 * 1024, wall_seconds=10))
    assert "ALL HELD" not in r.stdout
    assert r.killed_reason == "memory" and r.exit_code is None, r


@pytest.mark.asyncio
async def test_a_run_within_its_memory_limit_is_not_stopped(sandboxed):
    # A forked child shares its parent's pages until it writes them: they count once, not twice.
    code = ("import os, time\nblock = bytearray(300 * 1024 * 1024)\nif os.fork() == 0:\n    time.sleep(1)\n"
            "    os._exit(0)\nos.wait()\nprint('OK')")
    r = await run_python(code, limits=SandboxLimits(memory_bytes=512 * 1024 * 1024))
    assert r.stdout == "OK\n" and r.exit_code == 0 and r.killed_reason is None, r


@pytest.mark.asyncio
async def test_cpu_limit(sandboxed):
    t0 = time.monotonic()
    r = await run_python("while True: pass", limits=SandboxLimits(wall_seconds=2.0, cpu_seconds=1))
    assert time.monotonic() - t0 < WAIT
    assert r.exit_code is None and r.killed_reason in ("cpu", "timeout")


# Children that each report the CPU they have used (one write a line: the lines of several stay whole);
# the parent only waits for them.
_BUSY_CHILDREN = """
import os, time
for _ in range({n}):
    if os.fork() == 0:
        reported = 0.0
        while {forever} or time.process_time() < {each}:
            if time.process_time() - reported > 0.05:
                reported = time.process_time()
                os.write(1, f"cpu {{os.getpid()}} {{reported}}\\n".encode())
        os._exit(0)
for _ in range({n}):
    os.wait()
print('ALL DONE')
"""


def _reported_cpu(stdout: str) -> float:
    """The CPU seconds the children said they used: the last report of each (a little under it)."""
    last = {}
    for line in stdout.splitlines():
        if line.startswith("cpu "):
            _, pid, used = line.split()
            last[pid] = float(used)
    return sum(last.values())


@pytest.mark.asyncio
async def test_the_cpu_limit_binds_the_whole_run_not_each_process(sandboxed):
    # RLIMIT_CPU alone let each of 4 children burn its own second, 4 s in all, and the run ended
    # normally. The run's processes share the budget.
    code = _BUSY_CHILDREN.format(n=4, forever=True, each=0)
    r = await run_python(code, limits=SandboxLimits(wall_seconds=WAIT, cpu_seconds=1))
    assert r.killed_reason == "cpu" and r.exit_code is None and "ALL DONE" not in r.stdout, r
    assert 0 < _reported_cpu(r.stdout) < 3, r.stdout  # about the budget, not 4 × it


@pytest.mark.asyncio
async def test_a_run_within_its_cpu_budget_is_not_stopped(sandboxed):
    code = _BUSY_CHILDREN.format(n=3, forever=False, each=0.1)
    r = await run_python(code, limits=SandboxLimits(wall_seconds=WAIT, cpu_seconds=2))
    assert r.stdout.endswith("ALL DONE\n") and r.exit_code == 0 and r.killed_reason is None, r


@pytest.mark.asyncio
async def test_wall_timeout(sandboxed):
    t0 = time.monotonic()
    r = await run_python("import time\nprint('started')\ntime.sleep(120)",
                         limits=SandboxLimits(wall_seconds=1.0))
    assert time.monotonic() - t0 < WAIT  # far less than the sleep
    assert r.timed_out and r.killed_reason == "timeout" and r.exit_code is None
    assert r.stdout == "started\n"  # output produced before the kill is kept


@pytest.mark.asyncio
async def test_output_flood_truncated(sandboxed):
    limits = SandboxLimits(wall_seconds=2 * WAIT, max_output_bytes=16 * 1024)
    t0 = time.monotonic()
    r = await run_python("import sys\nwhile True:\n    print('x' * 1000)\n    sys.stderr.write('y' * 1000)",
                         limits=limits)
    assert time.monotonic() - t0 < WAIT  # killed on the flood, not at the wall limit
    assert r.output_truncated and r.killed_reason == "output_limit" and r.exit_code is None
    assert 0 < len(r.stdout) <= 16 * 1024 and len(r.stderr) <= 16 * 1024


# --- process lifecycle & event loop -----------------------------------------------------------

@pytest.mark.asyncio
async def test_cancel_kills_whole_sandbox(sandboxed, monkeypatch):
    spawned = []
    real_exec = asyncio.create_subprocess_exec

    async def spy(*args, **kwargs):
        proc = await real_exec(*args, **kwargs)
        spawned.append(proc.pid)
        return proc

    monkeypatch.setattr(asyncio, "create_subprocess_exec", spy)
    mark = _marker()
    code = (_set_comm(mark) + "import os, time\n"
            "if os.fork() == 0:\n    os.setsid()\ntime.sleep(30)")
    task = asyncio.create_task(run_python(code, limits=SandboxLimits(wall_seconds=30)))
    assert await _wait_until(lambda: len(_pids_named(mark)) == 2, WAIT), "sandboxed code did not start"
    pids = _pids_named(mark) + spawned
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await _wait_until(lambda: not any(_alive(p) for p in pids), WAIT), "orphans left behind"
    assert await _wait_until(lambda: not any(os.path.exists(f"/proc/{p}") for p in spawned), WAIT)


@pytest.mark.slow
@pytest.mark.asyncio
async def test_event_loop_stays_responsive(sandboxed, tmp_path):
    # A CPU-bound job that runs until the test lets it finish: while it runs, the loop must serve
    # another run from start to end, which it cannot if the job blocks it (the work is in a subprocess).
    tmp_path.chmod(0o755)  # binds must be readable by the unprivileged sandbox uid
    release, mark = tmp_path / "release", _marker()
    code = _set_comm(mark) + f"import os\nwhile not os.path.exists({str(release)!r}):\n    pass\nprint('done')"
    limits = SandboxLimits(wall_seconds=WAIT, cpu_seconds=WAIT)
    job = asyncio.create_task(run_python(code, extra_ro_binds=[str(tmp_path)], limits=limits))
    assert await _wait_until(lambda: [p for p in _pids_named(mark) if _alive(p)], WAIT), "the job did not start"
    other = await run_python("print('meanwhile')", limits=FAST)
    assert other.stdout == "meanwhile\n" and not job.done()
    assert [p for p in _pids_named(mark) if _alive(p)], "the job ended before the other run was served"
    release.touch()
    r = await job
    assert r.stdout == "done\n" and r.killed_reason is None


# --- availability & explicit unsandboxed fallback ---------------------------------------------

def test_probe_reports_missing_bwrap(monkeypatch):
    monkeypatch.setattr(sandbox, "_probe_result", None)
    monkeypatch.setattr(sandbox, "_bwrap_path", lambda: None)
    ok, reason = sandbox.sandbox_available()
    assert not ok and "bubblewrap" in reason


@pytest.mark.asyncio
async def test_refuses_without_sandbox(monkeypatch):
    monkeypatch.setattr(sandbox, "sandbox_available", lambda: (False, "bwrap missing (test)"))
    _set_allow(monkeypatch, False)
    with pytest.raises(SandboxUnavailable, match="RELAY_ALLOW_UNSANDBOXED_CODE") as exc:
        await run_python("print(1)")
    assert "bwrap missing (test)" in str(exc.value)


@pytest.mark.asyncio
async def test_unsandboxed_fallback_when_explicitly_allowed(monkeypatch, caplog):
    monkeypatch.setattr(sandbox, "sandbox_available", lambda: (False, "bwrap missing (test)"))
    _set_allow(monkeypatch, True)
    monkeypatch.setenv("RELAY_LLM_API_KEY", "sk-very-secret")
    with caplog.at_level("WARNING", logger="agents.sandbox"):
        r = await run_python("import os\nprint(sum(range(10)), os.environ.get('RELAY_LLM_API_KEY'))")
    assert r.stdout == "45 None\n" and r.exit_code == 0 and r.sandboxed is False
    assert any("WITHOUT a sandbox" in rec.message for rec in caplog.records)
    r = await run_python("while True: pass", limits=SandboxLimits(wall_seconds=1.5, cpu_seconds=1))
    assert r.exit_code is None and r.killed_reason in ("cpu", "timeout")


def test_require_sandbox_helper_fails_when_services_required(monkeypatch):
    monkeypatch.setattr(sandbox, "sandbox_available", lambda: (False, "no bwrap here"))
    monkeypatch.setenv("RELAY_REQUIRE_SERVICES", "1")
    with pytest.raises(pytest.fail.Exception, match="no bwrap here"):
        require_sandbox()
    monkeypatch.delenv("RELAY_REQUIRE_SERVICES")
    with pytest.raises(pytest.skip.Exception, match="no bwrap here"):
        require_sandbox()


def test_the_memory_watchdog_never_counts_processes_outside_the_sandbox():
    """Until bwrap has mounted the sandbox's own /proc, /proc/<child>/root/proc is the host's:
    summing it killed a program that only slept ("stopped by the sandbox's memory limit")."""
    assert sandbox._sandbox_memory("/proc", "rss") == 0
    assert sandbox._sandbox_memory("/proc", "pss") == 0
    assert sandbox._cpu_times("/proc") == {}  # nor the CPU time of the host's processes
