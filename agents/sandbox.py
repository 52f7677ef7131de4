"""Run untrusted Python in a bubblewrap sandbox (docs/design.md section 10).

No network, read-only system/interpreter mounts, a private size-capped /tmp, CPU / memory /
process / wall-time / output limits. The memory and CPU limits bind the whole run: RLIMIT_AS and
RLIMIT_CPU cap each process, and a watchdog sums the resident memory and the CPU time of every
process in the sandbox's pid namespace (through its own /proc) and stops the run when a sum passes
its limit. Refuses to run when no sandbox is usable unless the
operator sets RELAY_ALLOW_UNSANDBOXED_CODE=1 (then: rlimits + temp dir + clean env only).
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass

log = logging.getLogger(__name__)

_PY_MOUNT, _VENV_MOUNT = "/opt/python", "/opt/venv"
_TMP = "/tmp"  # noqa: S108 - the sandbox's own private tmpfs, not the host's /tmp
_SCRIPT = _TMP + "/main.py"
_TMPFS_BYTES = 64 * 1024 * 1024
_SYSTEM_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/etc/ld.so.cache",
                 "/etc/localtime")
# Random high uid per run (root mode): never a real account, and RLIMIT_NPROC is counted per uid,
# so concurrent runs do not share (or exhaust) one process budget.
_UID_BASE = 1_500_000_000
_POLL_SECONDS = 0.05
# Resident memory double-counts pages a forked child still shares with its parent; proportional
# set sizes (smaps_rollup) do not, but cost a page-table walk, so they only confirm an excess,
# at most this often.
_PSS_EVERY_SECONDS = 0.5
_PAGE = os.sysconf("SC_PAGE_SIZE")
_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class SandboxLimits:
    wall_seconds: float = 10.0
    cpu_seconds: int = 5  # the run's: its processes together
    memory_bytes: int = 512 * 1024 * 1024
    max_output_bytes: int = 64 * 1024
    max_processes: int = 32


@dataclass
class SandboxResult:
    stdout: str
    stderr: str
    exit_code: int | None  # None when killed
    timed_out: bool
    output_truncated: bool
    duration_ms: int
    killed_reason: str | None  # "timeout", "output_limit", "memory", "cpu", "killed", ...
    sandboxed: bool  # False only in the explicitly-allowed unsandboxed mode


class SandboxUnavailable(Exception):
    """No usable sandbox and unsandboxed execution was not explicitly allowed."""


# Runs inside the sandbox before the user's code. Limits are set here rather than in a
# preexec_fn: preexec_fn is unsafe in threaded servers (daphne, thread pools), and the limits
# should bind the user's code, not bwrap. Hard limits = soft, so the code cannot raise them.
# When bwrap runs as root it creates no user namespace (a root-owned userns maps the sandbox
# uid to host uid 0, which the kernel exempts from RLIMIT_NPROC, so a fork bomb is NOT
# contained - verified). Instead bwrap keeps only CAP_SETUID/SETGID and we drop to an
# unprivileged host uid here, which also clears every capability before user code runs.
_BOOTSTRAP = r"""
import os, resource as R, sys
cpu, mem, nproc, fsize, uid = map(int, sys.argv[1:6])
path, sitedirs = sys.argv[6], sys.argv[7:]
for res, soft, hard in ((R.RLIMIT_CPU, cpu, cpu + 1), (R.RLIMIT_AS, mem, mem),
        (R.RLIMIT_NPROC, nproc, nproc), (R.RLIMIT_FSIZE, fsize, fsize),
        (R.RLIMIT_CORE, 0, 0), (R.RLIMIT_NOFILE, 256, 256)):
    R.setrlimit(res, (soft, hard))
if uid and os.getuid() == 0:
    os.setgroups([]); os.setresgid(uid, uid, uid); os.setresuid(uid, uid, uid)
    if os.getresuid() != (uid, uid, uid):
        sys.exit("sandbox: failed to drop privileges")
import site
for d in sitedirs:
    site.addsitedir(d)
sys.path.insert(0, os.path.dirname(path))
sys.argv = [path]
with open(path, encoding="utf-8") as f:
    src = f.read()
try:
    exec(compile(src, path, "exec"), {"__name__": "__main__", "__file__": path})
except SystemExit:
    raise
except BaseException as e:
    import traceback  # skip this bootstrap frame so users see only their own code
    traceback.print_exception(type(e), e, e.__traceback__.tb_next)
    sys.exit(1)
"""

_probe_result: tuple[bool, str] | None = None


def _bwrap_path() -> str | None:
    return shutil.which("bwrap") or ("/usr/bin/bwrap" if os.access("/usr/bin/bwrap", os.X_OK) else None)


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _interpreter_layout() -> tuple[list[tuple[str, str]], str, list[str], dict[str, str]]:
    """(binds host->inside, interpreter inside, site dirs inside, extra env)."""
    base = os.path.realpath(sys.base_prefix)
    venv = os.path.realpath(sys.prefix)
    binds: list[tuple[str, str]] = []
    env: dict[str, str] = {}
    # Remapped to /opt so the sandbox sees neither /root nor /work, only the interpreter/venv.
    if not _under(base, "/usr"):
        binds.append((base, _PY_MOUNT))
        env["LD_LIBRARY_PATH"] = _PY_MOUNT + "/lib"  # libpython's RUNPATH points at the host path
    if venv != base:
        binds.append((venv, _VENV_MOUNT))

    def inside(p: str) -> str:
        p = os.path.realpath(p)
        for host, dest in binds:
            if _under(p, host):
                return dest + p[len(host):]
        return p

    sitedirs = list(dict.fromkeys(inside(sysconfig.get_path(k)) for k in ("purelib", "platlib")))
    return binds, inside(sys.executable), sitedirs, env


def _child_env(home: str) -> dict[str, str]:
    # Built from scratch: nothing from os.environ (API keys, DATABASE_URL...) reaches the code.
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8",
            "PYTHONDONTWRITEBYTECODE": "1", "HOME": home}


def _python_args(exe: str, limits: SandboxLimits, uid: int, script: str, sitedirs: list[str]) -> list[str]:
    # -I: ignore PYTHON* env and user site; -S: we add site dirs ourselves; -B: no .pyc; -u: keep
    # partial output if the process is killed.
    return [exe, "-I", "-S", "-B", "-u", "-c", _BOOTSTRAP, str(int(limits.cpu_seconds)),
            str(int(limits.memory_bytes)), str(int(limits.max_processes)), str(_TMPFS_BYTES),
            str(uid), script, *sitedirs]


def _sandbox_command(code: str, limits: SandboxLimits, extra_ro_binds: Sequence[str], info_fd: int | None = None):
    bwrap = _bwrap_path() or "bwrap"
    binds, exe, sitedirs, extra_env = _interpreter_layout()
    extra = [os.path.normpath(p) for p in extra_ro_binds]
    for path in extra:
        if not os.path.isabs(path) or not os.path.exists(path):
            raise ValueError(f"extra_ro_binds: {path!r} is not an existing absolute path")
    argv = [bwrap, "--die-with-parent", "--new-session"]
    if info_fd is not None:  # bwrap writes {"child-pid": ...}: the sandbox's pid 1, seen from here
        argv += ["--info-fd", str(info_fd)]
    if os.geteuid() == 0:
        # Not --unshare-all: it implies a user namespace (see _BOOTSTRAP for why not as root).
        argv += ["--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts",
                 "--unshare-cgroup-try", "--cap-drop", "ALL",
                 "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
        uid = _UID_BASE + secrets.randbelow(1 << 24)
    else:
        # Unprivileged: the userns is owned by our non-root uid, so RLIMIT_NPROC applies.
        argv += ["--unshare-all", "--unshare-user", "--uid", "65534", "--gid", "65534",
                 "--disable-userns"]
        uid = 0
    # /proc, /dev and the private /tmp first, so extra binds under /tmp stay visible.
    code_fd = os.memfd_create("relay-code")  # the code is copied in: never via a shell or argv
    os.write(code_fd, code.encode("utf-8", errors="replace"))
    os.lseek(code_fd, 0, os.SEEK_SET)
    argv += ["--proc", "/proc", "--dev", "/dev",
             "--size", str(_TMPFS_BYTES), "--perms", "1777", "--tmpfs", _TMP,
             "--perms", "0444", "--ro-bind-data", str(code_fd), _SCRIPT]
    made, mounted = {_TMP}, set()

    def ro_bind(host: str, dest: str) -> None:
        # bwrap creates missing parents as 0700 root, which the dropped uid could not traverse.
        parents, parent = [], os.path.dirname(dest)
        while parent != "/" and parent not in made and not any(_under(parent, m) for m in mounted):
            parents.append(parent)
            parent = os.path.dirname(parent)
        for d in reversed(parents):
            argv.extend(["--perms", "0755", "--dir", d])
            made.add(d)
        argv.extend(["--ro-bind", host, dest])
        mounted.add(dest)

    for path in _SYSTEM_PATHS:  # /etc gets only what the dynamic loader needs
        if os.path.islink(path):
            argv += ["--symlink", os.readlink(path), path]
        elif os.path.exists(path):
            ro_bind(path, path)
    for host, dest in [*binds, *((p, p) for p in extra)]:
        ro_bind(host, dest)
    argv += ["--chdir", _TMP, "--", *_python_args(exe, limits, uid, _SCRIPT, sitedirs)]
    return argv, (code_fd,), {**_child_env(_TMP), **extra_env}


def _probe() -> tuple[bool, str]:
    if _bwrap_path() is None:
        return False, "bubblewrap (bwrap) is not installed (apt-get install bubblewrap)"
    argv, fds, env = _sandbox_command("print('ok')", SandboxLimits(), ())
    try:
        r = subprocess.run(argv, env=env, pass_fds=fds, stdin=subprocess.DEVNULL,  # noqa: S603 - fixed argv
                           capture_output=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, f"bubblewrap failed to start: {e}"
    finally:
        for fd in fds:
            os.close(fd)
    if r.returncode != 0 or r.stdout.strip() != b"ok":
        err = r.stderr.decode(errors="replace").strip()[-300:]
        return False, f"bubblewrap cannot create a sandbox here (namespaces disabled?): {err}"
    return True, "bubblewrap sandbox available"


def sandbox_available() -> tuple[bool, str]:
    """(ok, reason). Probes once by running a trivial program in the real sandbox; cached."""
    global _probe_result
    if _probe_result is None:
        _probe_result = _probe()
    return _probe_result


def _unsandboxed_allowed() -> bool:
    value = None
    try:
        from django.conf import settings
        if settings.configured:
            value = getattr(settings, "RELAY_ALLOW_UNSANDBOXED_CODE", None)
    except ImportError:
        pass
    if value is None:
        value = os.environ.get("RELAY_ALLOW_UNSANDBOXED_CODE", "")
    return str(value).strip().lower() in ("1", "true", "yes", "on")


def _kill_group(pid: int) -> None:
    # Killing bwrap takes the sandbox with it: --die-with-parent SIGKILLs its pid-1, and the
    # kernel then kills everything left in that pid namespace (even setsid'd processes).
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


async def _child_pid(pipe) -> int | None:
    """The host pid of the sandbox's init from bwrap's --info-fd JSON; None if bwrap exited first."""
    reader = asyncio.StreamReader()
    transport, _ = await asyncio.get_running_loop().connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), pipe)
    data = b""
    try:
        while b"}" not in data and (chunk := await reader.read(4096)):
            data += chunk
    finally:
        transport.close()
    try:
        return int(json.loads(data)["child-pid"])
    except (ValueError, KeyError, TypeError):
        return None


def _sandbox_pids(procfs: str) -> list[str]:
    """The pids of the sandbox's own procfs (its pid namespace only)."""
    try:
        # Until bwrap has mounted the sandbox's /proc, the path is the host's (it shows this process
        # as "self"): counting it would add up every process of the host.
        if os.readlink(f"{procfs}/self") == str(os.getpid()):
            return []
    except OSError:
        pass  # the sandbox's own procfs: this process is not in its pid namespace
    try:
        return [entry for entry in os.listdir(procfs) if entry.isdigit()]
    except OSError:  # the sandbox is gone
        return []


def _sandbox_memory(procfs: str, field: str) -> int:
    """Bytes held by every process of the sandbox, read from its own procfs.

    field "rss": resident anonymous pages (statm resident - shared), cheap; "pss": proportional
    set size, which counts a page shared by several processes once.
    """
    total = 0
    for pid in _sandbox_pids(procfs):
        try:
            if field == "rss":
                with open(f"{procfs}/{pid}/statm", "rb") as f:
                    _size, resident, shared = f.read().split()[:3]
                total += (int(resident) - int(shared)) * _PAGE
            else:
                with open(f"{procfs}/{pid}/smaps_rollup", "rb") as f:
                    total += next((int(line.split()[1]) * 1024 for line in f if line.startswith(b"Pss:")), 0)
        except (OSError, ValueError):  # exited meanwhile
            continue
    return total


def _cpu_times(procfs: str) -> dict[tuple[str, str], float]:
    """CPU seconds (user + system, all threads) of each process of the sandbox, by (pid, start time):
    a pid used again is another process."""
    times = {}
    for pid in _sandbox_pids(procfs):
        try:
            with open(f"{procfs}/{pid}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()  # the name before ")" may hold spaces
        except OSError:  # exited meanwhile
            continue
        times[(pid, fields[19].decode())] = (int(fields[11]) + int(fields[12])) / _TICKS
    return times


class _RunCpu:
    """The CPU time of a whole run: RLIMIT_CPU binds each process, so without a sum 31 forked busy
    loops would take 31 cores for the wall limit while holding one heavy slot.

    Each process counts with its own time, as last seen once it has gone: not its parent's
    cutime, which repeats the time of children already counted.
    """

    def __init__(self, procfs: str):
        self.procfs, self.gone, self.live = procfs, 0.0, {}

    def seconds(self) -> float:
        now = _cpu_times(self.procfs)
        self.gone += sum(used for key, used in self.live.items() if key not in now)
        self.live = now
        return self.gone + sum(now.values())


async def _watch(pipe, limits: SandboxLimits, kill) -> None:
    try:
        child = await _child_pid(pipe)
    except OSError:
        log.warning("sandbox watchdog could not start", exc_info=True)
        return
    if child is None:
        return
    procfs, confirmed = f"/proc/{child}/root/proc", 0.0
    cpu = _RunCpu(procfs)
    while True:
        if cpu.seconds() > limits.cpu_seconds:
            kill("cpu")
            return
        if _sandbox_memory(procfs, "rss") > limits.memory_bytes and time.monotonic() - confirmed > _PSS_EVERY_SECONDS:
            if await asyncio.to_thread(_sandbox_memory, procfs, "pss") > limits.memory_bytes:
                kill("memory")
                return
            confirmed = time.monotonic()
        await asyncio.sleep(_POLL_SECONDS)


async def _execute(argv, *, env, cwd, fds, limits: SandboxLimits, stdin: str, sandboxed: bool,
                   info_fd: int | None = None) -> SandboxResult:
    started = time.monotonic()
    info = os.fdopen(info_fd, "rb", buffering=0) if info_fd is not None else None  # closed however we leave
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=cwd,
            pass_fds=fds, start_new_session=True)
    except BaseException:
        if info is not None:
            info.close()
        raise
    finally:
        for fd in fds:
            os.close(fd)
    out, err = bytearray(), bytearray()
    state: dict[str, object] = {"reason": None, "truncated": False}

    def kill(reason: str) -> None:
        state["reason"] = state["reason"] or reason
        _kill_group(proc.pid)

    async def pump(stream: asyncio.StreamReader, buf: bytearray) -> None:
        # Past the cap we kill, then keep draining (and discarding) to EOF: memory stays bounded,
        # and asyncio's proc.wait() only returns once every pipe has been read to EOF.
        while chunk := await stream.read(65536):
            room = limits.max_output_bytes - len(buf)
            if len(chunk) > room and not state["truncated"]:
                state["truncated"] = True
                kill("output_limit")
            buf += chunk[:max(room, 0)]

    async def feed() -> None:
        if proc.stdin is None:
            return
        try:
            proc.stdin.write(stdin.encode("utf-8", errors="replace"))
            await proc.stdin.drain()
            proc.stdin.close()
        except (BrokenPipeError, ConnectionResetError):
            pass

    work = asyncio.gather(pump(proc.stdout, out), pump(proc.stderr, err), feed(), proc.wait())
    watchdog = asyncio.ensure_future(_watch(info, limits, kill)) if info is not None else None
    try:
        done, _ = await asyncio.wait({work}, timeout=limits.wall_seconds)
        if done:
            work.result()
        else:
            kill("timeout")
            try:  # keep pumping to EOF now the sandbox is dead (see pump)
                await asyncio.wait_for(work, 5)
            except TimeoutError:
                pass  # a pipe held by an escaped process: only possible unsandboxed
    except BaseException:  # cancelled: leave nothing running behind us
        kill("cancelled")
        work.cancel()
        # Nobody awaits the cancelled pumps now: retrieve their end so it is not logged as an error.
        work.add_done_callback(lambda f: f.cancelled() or f.exception())
        raise
    finally:
        if watchdog is not None:
            watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watchdog
            info.close()

    rc = proc.returncode
    stdout = out.decode("utf-8", errors="replace")
    stderr = err.decode("utf-8", errors="replace")
    reason = state["reason"]
    exit_code: int | None = None if reason else rc
    if reason is None and rc:
        # bwrap reports a signalled child as 128+signal (a plain exit(137) looks the same).
        sig = -rc if rc < 0 else (rc - 128 if sandboxed and rc > 128 else 0)
        if sig:
            reason = {signal.SIGXCPU: "cpu", signal.SIGKILL: "killed"}.get(sig, f"signal {sig}")
            exit_code = None
        elif "MemoryError" in stderr[-300:]:
            reason = "memory"  # RLIMIT_AS made the allocation fail; the process exited itself
    return SandboxResult(
        stdout=stdout, stderr=stderr, exit_code=exit_code, timed_out=reason == "timeout",
        output_truncated=bool(state["truncated"]),
        duration_ms=int((time.monotonic() - started) * 1000),
        killed_reason=reason, sandboxed=sandboxed)


async def run_python(code: str, *, limits: SandboxLimits = SandboxLimits(), stdin: str = "",
                     extra_ro_binds: Sequence[str] = ()) -> SandboxResult:
    """Run `code` with `python -I` in the sandbox; `extra_ro_binds` are host paths mounted
    read-only at the same path. The venv's site-packages are always importable (e.g. sympy)."""
    ok, reason = await asyncio.to_thread(sandbox_available)
    if ok:
        info_r, info_w = os.pipe()
        try:
            argv, fds, env = _sandbox_command(code, limits, extra_ro_binds, info_fd=info_w)
        except BaseException:
            os.close(info_r)
            os.close(info_w)
            raise
        return await _execute(argv, env=env, cwd="/", fds=(*fds, info_w), limits=limits, stdin=stdin,
                              sandboxed=True, info_fd=info_r)
    if not _unsandboxed_allowed():
        raise SandboxUnavailable(
            f"Refusing to run code: no sandbox is available ({reason}). Install bubblewrap with "
            "user namespaces enabled, or set RELAY_ALLOW_UNSANDBOXED_CODE=1 to run code without "
            "isolation (only resource limits) at your own risk.")
    log.warning("Running code WITHOUT a sandbox (RELAY_ALLOW_UNSANDBOXED_CODE is set): %s", reason)
    workdir = tempfile.mkdtemp(prefix="relay-code-")
    try:
        script = os.path.join(workdir, "main.py")
        with open(script, "w", encoding="utf-8", errors="replace") as f:
            f.write(code)
        sitedirs = list(dict.fromkeys(sysconfig.get_path(k) for k in ("purelib", "platlib")))
        argv = _python_args(sys.executable, limits, 0, script, sitedirs)
        return await _execute(argv, env=_child_env(workdir), cwd=workdir, fds=(), limits=limits,
                              stdin=stdin, sandboxed=False)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
