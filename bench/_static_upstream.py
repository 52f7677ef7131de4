"""A static OpenAI-compatible upstream: nginx returning fixed bodies, so the gateways are the bottleneck.

The fake upstream (tests/support/fake_upstream.py) is Python and costs about as much CPU per
request as a gateway; nginx answering from memory costs a fraction. nginx cannot read the
request's `stream` flag, so the two kinds of answer live under two base URLs, each a model of
its own on every gateway: `<url>/plain/v1` answers one chat completion, `<url>/stream/v1` a
stream of CHUNKS chunks of one token each, its usage, and `[DONE]`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

CHUNKS = 50
PROMPT_TOKENS = 9


def plain_body(model: str) -> str:
    return json.dumps({
        "id": "chatcmpl-static", "object": "chat.completion", "created": 1764633600, "model": model,
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": " ".join(["token"] * CHUNKS)}}],
        "usage": {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": CHUNKS, "total_tokens": PROMPT_TOKENS + CHUNKS},
    }, separators=(",", ":"))


def stream_body(model: str) -> str:
    def chunk(delta: dict, finish=None, usage=None) -> str:
        body = {"id": "chatcmpl-static", "object": "chat.completion.chunk", "created": 1764633600, "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}] if usage is None else []}
        if usage is not None:
            body["usage"] = usage
        return f"data: {json.dumps(body, separators=(',', ':'))}\n\n"

    parts = [chunk({"role": "assistant", "content": ""})]
    parts += [chunk({"content": "token" if i == 0 else " token"}) for i in range(CHUNKS)]
    parts.append(chunk({}, finish="stop"))
    parts.append(chunk({}, usage={"prompt_tokens": PROMPT_TOKENS, "completion_tokens": CHUNKS,
                                  "total_tokens": PROMPT_TOKENS + CHUNKS}))
    parts.append("data: [DONE]\n\n")
    return "".join(parts)


class StaticUpstream:
    """A private nginx (its own prefix, never the system's) on `port`; `workers` worker processes."""

    def __init__(self, port: int, model_plain: str, model_stream: str, *, workers: int = 1):
        self.port, self.url = port, f"http://127.0.0.1:{port}"
        self.prefix = Path(tempfile.mkdtemp(prefix="relay-static-upstream-"))
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (self.prefix / "temp" / kind).mkdir(parents=True)
        temp = "\n".join(f"    {kind}_temp_path {self.prefix / 'temp' / kind};"
                         for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        bodies = self.prefix / "bodies"
        bodies.mkdir()
        (bodies / "plain.json").write_text(plain_body(model_plain))
        (bodies / "stream.txt").write_text(stream_body(model_stream))
        user = "user root;\n" if os.geteuid() == 0 else ""
        conf = f"""{user}worker_processes {workers};
pid {self.prefix / 'nginx.pid'};
error_log {self.prefix / 'error.log'} warn;
events {{ worker_connections 4096; }}
http {{
{temp}
    access_log off;
    keepalive_requests 1000000;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        # Files, not `return` (its text is limited to 4 KB): nginx serves a file to GET only,
        # so the POST's 405 is turned into the file (an internal redirect, as a GET).
        location = /plain/v1/chat/completions {{
            default_type application/json;
            alias {bodies}/plain.json;
            error_page 405 =200 $uri;
        }}
        location = /stream/v1/chat/completions {{
            default_type text/event-stream;
            alias {bodies}/stream.txt;
            error_page 405 =200 $uri;
        }}
        location ~ ^/(plain|stream)/v1/models$ {{
            default_type application/json;
            return 200 '{{"object":"list","data":[]}}';
        }}
    }}
}}
"""
        self.conf = self.prefix / "nginx.conf"
        self.conf.write_text(conf)
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        subprocess.run([nginx, "-t", "-q", "-p", str(self.prefix), "-c", str(self.conf)], check=True)
        # Its errors go to error.log; inheriting our stdout would keep a pipe reading us open.
        self.process = subprocess.Popen([nginx, "-p", str(self.prefix), "-c", str(self.conf), "-g", "daemon off;"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def base(self, kind: str) -> str:
        return f"{self.url}/{kind}/v1"

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=20)
        shutil.rmtree(self.prefix, ignore_errors=True)
