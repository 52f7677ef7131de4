"""LiteLLM Proxy for the benches that compare with it (bench/load.py, bench/routing.py).

One pinned version, installed by the bench itself into var/litellm/venv-<python> (outside Relay's
environment: its dependencies are not Relay's), started on a config the bench writes. One such
environment per Python interpreter: LiteLLM runs on the interpreter that runs Relay, whichever
the bench was started with, since builds of one Python version differ in speed (bench/README.md,
"Which Python") and a comparison on two of them would measure the interpreters too.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _relay import ROOT, free_port, interpreter

# Pinned so figures compare across runs. The newest release whose `[proxy]` extra resolves from the
# package index this project uses (later ones need builds of litellm-proxy / litellm-enterprise
# that it does not carry); after 1.107.0, the compromised release.
LITELLM_VERSION = "1.108.7"


def venv_for(python: dict) -> Path:
    """LiteLLM's environment for the interpreter `python` (_relay.interpreter()): named by its version and path."""
    tag = hashlib.sha256(python["base"].encode()).hexdigest()[:8]
    return ROOT / "var" / "litellm" / f"venv-{python['version']}-{tag}"


VENV = venv_for(interpreter())
# Without a database LiteLLM authenticates its master key only (no virtual keys, no budgets).
KEY = "sk-bench-" + "0123456789abcdef" * 3


def installed_version() -> str | None:
    python = VENV / "bin" / "python"
    if not python.exists():
        return None
    done = subprocess.run([str(python), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
                          capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else None


def ensure_installed() -> None:
    if installed_version() == LITELLM_VERSION and (VENV / "bin" / "litellm").exists():
        return
    print(f"installing LiteLLM Proxy {LITELLM_VERSION} into {VENV.relative_to(ROOT)} ...", flush=True)
    if not (VENV / "bin" / "pip").exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    subprocess.run([str(VENV / "bin" / "pip"), "install", "-q", f"litellm[proxy]=={LITELLM_VERSION}"], check=True)


def start(config: str, *, workers: int = 1) -> tuple[subprocess.Popen, str, Path]:
    """LiteLLM Proxy on `config` (YAML text) with `workers` processes, once it answers; its log file."""
    ensure_installed()
    config_path = Path(tempfile.mkdtemp(prefix="litellm-")) / "config.yaml"
    config_path.write_text(config)
    port = free_port()
    log_path = config_path.parent / "litellm.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [str(VENV / "bin" / "litellm"), "--config", str(config_path), "--host", "127.0.0.1", "--port", str(port),
             "--num_workers", str(workers)], stdout=log, stderr=subprocess.STDOUT,
            # Not Relay's environment: LiteLLM would take DATABASE_URL for its own.
            env={"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", str(ROOT / "var")),
                 "LITELLM_LOG": "ERROR"})
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/health/liveliness", timeout=180, process=process)
    except RuntimeError:
        process.terminate()
        raise RuntimeError(f"LiteLLM did not come up; its log: {log_path}") from None
    return process, url, log_path


def wait_http(url: str, timeout: float = 120, process: subprocess.Popen | None = None) -> None:
    """Until `url` answers below 500 (a server starting in another process)."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            break
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up")
