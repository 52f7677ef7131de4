"""CPU time per component, read from the processes themselves (/proc), to price each guarantee.

A component is a set of processes: a process tree (a Relay server and its workers, LiteLLM,
an nginx master and its workers) or every process of a program (all PostgreSQL backends, every
redis-server), optionally narrowed by its command line (on a machine shared with other
benches: the PostgreSQL backends of one database, the Redis server on one port). `snapshot()`
sums user + system time of each; the difference between two snapshots divided by the requests
served between them is the CPU milliseconds per request. Processes that start or end between two
snapshots are counted for what they used while seen. `machine_cpu_seconds()` is the CPU time
every process on the machine used, to tell how much of it the measured components left to others.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Callable
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> tuple[str, int, float] | None:
    """(command name, parent pid, CPU seconds) of a live process."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    name = raw[raw.index("(") + 1:raw.rindex(")")]
    fields = raw[raw.rindex(")") + 2:].split()
    # After the name: state(0) ppid(1) ... utime(11) stime(12) (fields 14 and 15 of proc(5)).
    return name, int(fields[1]), (int(fields[11]) + int(fields[12])) / TICK


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of one live process (a PostgreSQL backend), None if it is gone."""
    stat = _stat(pid)
    return stat[2] if stat else None


def _processes() -> dict[int, tuple[str, int, float]]:
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := _stat(int(entry))) is not None:
            out[int(entry)] = stat
    return out


def _tree(root: int, table: dict) -> set[int]:
    members, grew = {root}, True
    while grew:
        grew = False
        for pid, (_, ppid, _) in table.items():
            if ppid in members and pid not in members:
                members.add(pid)
                grew = True
    return members & set(table)


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def machine_cpu_seconds() -> tuple[float, float]:
    """(CPU seconds spent by everything on the machine, all cores; of which interrupts), from
    /proc/stat: busy is all but idle and iowait. Interrupts (mostly the loopback network's
    softirqs) are charged to no process, so they are a component of their own."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / TICK, (irq + softirq) / TICK


def postgres_of(database: str) -> Callable[[str], bool]:
    """The processes of one database's load: its backends and the server's shared writers (the
    postmaster, WAL writer, checkpointer, background writer), not other databases' backends."""
    shared = ("/bin/postgres", "checkpointer", "background writer", "walwriter")

    def ours(command: str) -> bool:
        return f" {database} " in command + " " or any(part in command for part in shared)
    return ours


class Components:
    """Named components: `trees` {name: [root pids]}, `programs` {name: command name prefix, or
    (prefix, a test of the full command line)}."""

    def __init__(self, trees: dict[str, list[int]], programs: dict[str, str | tuple[str, Callable[[str], bool]]]):
        self.trees, self.programs = trees, programs

    def snapshot(self) -> dict[str, dict[int, float]]:
        """{component: {pid: CPU seconds}}; the load generator is this process."""
        table = _processes()
        out = {}
        claimed = set()
        for name, roots in self.trees.items():
            pids = set().union(*(_tree(root, table) for root in roots)) if roots else set()
            out[name] = {pid: table[pid][2] for pid in pids}
            claimed |= pids
        for name, program in self.programs.items():
            prefix, test = program if isinstance(program, tuple) else (program, None)
            out[name] = {pid: cpu for pid, (command, _, cpu) in table.items()
                         if command.startswith(prefix) and pid not in claimed and (test is None or test(cmdline(pid)))}
        usage = resource.getrusage(resource.RUSAGE_SELF)
        out["load generator"] = {os.getpid(): usage.ru_utime + usage.ru_stime}
        return out


def per_request(before: dict, after: dict, requests: int) -> dict[str, float]:
    """CPU milliseconds per request of each component (and `total`) between two snapshots.

    Per process: a process seen only in `after` counts from zero (it started meanwhile); one seen
    only in `before` has ended, and its last moments are lost (PostgreSQL backends of closed
    connections: a small undercount, never a negative figure).
    """
    if requests <= 0:
        return {}
    out = {}
    for name, pids in after.items():
        earlier = before.get(name, {})
        spent = sum(max(0.0, cpu - earlier.get(pid, 0.0)) for pid, cpu in pids.items())
        out[name] = round(spent * 1000 / requests, 3)
    out["total"] = round(sum(out.values()), 3)
    return out
