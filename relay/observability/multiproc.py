"""Several worker processes per instance: prometheus_client's multiprocess mode.

Each instance gets its own directory in PROMETHEUS_MULTIPROC_DIR (e.g. /run/relay/metrics/<name>);
whatever starts the workers empties it first with `manage.py prepare_metrics_dir` (stale files
of a previous run would otherwise be summed into the new one). Two instances on one host use
two directories, so neither reads nor wipes the other's files.
"""

from __future__ import annotations

import glob
import os
import re
from pathlib import Path

from prometheus_client import REGISTRY, CollectorRegistry, multiprocess

_LIVE_GAUGE_FILE = re.compile(r"gauge_live\w+?_(\d+)\.db$")


def directory() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def prepare_directory(path: str | os.PathLike) -> int:
    """Create the directory or remove the metric files (*.db) a previous run left in it.

    Only *.db files directly inside `path` go: a mistyped path such as / or $HOME loses nothing
    else. Returns how many files were removed.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    removed = 0
    for leftover in path.glob("*.db"):
        leftover.unlink(missing_ok=True)
        removed += 1
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reap_dead_workers(path: str) -> None:
    """Drop the live-gauge files of workers that died (uvicorn --workers has no child_exit hook),
    so active_sessions does not keep counting the sessions of a crashed worker."""
    for name in glob.glob(os.path.join(path, "gauge_live*_*.db")):
        found = _LIVE_GAUGE_FILE.search(name)
        if found and not _alive(int(found.group(1))):
            multiprocess.mark_process_dead(int(found.group(1)), path)


def collection_registry():
    """The registry to expose: this process's, or the sum over every worker of the instance."""
    path = directory()
    if not path:
        return REGISTRY
    reap_dead_workers(path)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=path)
    return registry


def child_exit(server, worker):
    """gunicorn hook (`child_exit = relay.observability.multiproc.child_exit` in its config)."""
    path = directory()
    if path:
        multiprocess.mark_process_dead(worker.pid, path)
