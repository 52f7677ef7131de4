"""The load tool of bench/load.py and bench/server_choice.py: a lean HTTP/1.1 client on asyncio.

Why not httpx: on a 2-core machine the load generator shares the CPU with the servers, and a
heavy client hides server differences behind its own cost. This one keeps one keep-alive
connection per virtual user, writes one request, reads the response (Content-Length or
chunked, so SSE streams too) and times it. Every server under test meets the same tool.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit


@dataclass
class LoadResult:
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    seconds: float = 0.0
    snapshots: list = field(default_factory=list)

    def fail(self, why: str) -> None:
        self.errors += 1
        if len(self.error_samples) < 5:
            self.error_samples.append(why)


class Connection:
    def __init__(self, url: str):
        parts = urlsplit(url)
        self.host, self.port = parts.hostname, parts.port or 80
        self.reader = self.writer = None

    async def _open(self):
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    def close(self):
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def request(self, method: str, path: str, body: bytes, headers: dict) -> tuple[int, bytes]:
        if self.writer is None:
            await self._open()
        head = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}", f"Content-Length: {len(body)}"]
        head += [f"{name}: {value}" for name, value in headers.items()]
        self.writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        raw = await self.reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        fields = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            fields[name.strip().lower()] = value.strip()
        if fields.get("transfer-encoding", "").lower() == "chunked":
            payload = await self._chunked()
        else:
            payload = await self.reader.readexactly(int(fields.get("content-length", "0")))
        if fields.get("connection", "").lower() == "close":
            self.close()
        return status, payload

    async def _chunked(self) -> bytes:
        parts = []
        while True:
            size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await self.reader.readuntil(b"\r\n")
                return b"".join(parts)
            parts.append((await self.reader.readexactly(size + 2))[:-2])


async def open_stream(conn: Connection, path: str, key: str, payload: bytes) -> bool:
    """Start a streamed completion on `conn` and wait for its first token: True once it is live."""
    await conn._open()
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n").encode()
    conn.writer.write(head + payload)
    if b" 200 " not in (await conn.reader.readuntil(b"\r\n\r\n")).split(b"\r\n")[0]:
        return False
    await conn.reader.readuntil(b'"content"')  # the first token arrived: the stream is live
    return True


def complete(status: int, payload: bytes, stream: bool) -> str | None:
    """None when the response is a whole answer; else why not."""
    if status != 200:
        return f"HTTP {status}: {payload[:200]!r}"
    if stream:
        return None if b"[DONE]" in payload or b'"type": "done"' in payload or b'"type":"done"' in payload \
            else f"stream without its end: {payload[-200:]!r}"
    try:
        answer = json.loads(payload)
    except ValueError:
        return f"not JSON: {payload[:200]!r}"
    # A 200 without an answer is a failure too (a gateway that lost the upstream's reply).
    choices = answer.get("choices") if isinstance(answer, dict) else None
    if choices and not (choices[0].get("message") or {}).get("content"):
        return f"empty answer: {payload[:200]!r}"
    return None


async def run_load(url: str | list[str], path: str, body: dict, *, headers: dict | None = None, concurrency: int = 32,
                   seconds: float = 10.0, stream: bool = False, warmup: float = 1.0, snapshot=None) -> LoadResult:
    """`concurrency` virtual users, each sending requests back to back for `seconds` (to `url`, or
    spread evenly over a list of servers' URLs).

    `snapshot()`, if given, is called when the measured window opens and when it closes (CPU
    counters: bench/_cpu.py); its two results are `result.snapshots`.
    """
    data = json.dumps(body).encode()
    all_headers = {"Content-Type": "application/json", **(headers or {})}
    result = LoadResult()
    started = time.perf_counter()
    measure_from = started + warmup
    stop_at = measure_from + seconds

    urls = [url] if isinstance(url, str) else url

    async def user(n: int):
        conn = Connection(urls[n % len(urls)])  # several servers: the users spread evenly over them
        while time.perf_counter() < stop_at:
            begin = time.perf_counter()
            try:
                status, payload = await conn.request("POST", path, data, all_headers)
                why = complete(status, payload, stream)
            except (OSError, asyncio.IncompleteReadError, ValueError) as error:
                conn.close()
                why = f"{error.__class__.__name__}: {error}"
            if begin < measure_from:
                continue
            if why is None:
                result.latencies.append(time.perf_counter() - begin)
            else:
                result.fail(why)
        conn.close()

    async def open_window():
        await asyncio.sleep(max(0.0, measure_from - time.perf_counter()))
        if snapshot is not None:
            result.snapshots.append(snapshot())

    window = asyncio.create_task(open_window())
    await asyncio.gather(*(user(n) for n in range(concurrency)))
    await window
    if snapshot is not None:
        result.snapshots.append(snapshot())
    result.seconds = time.perf_counter() - measure_from
    return result


def figures(result: LoadResult) -> dict:
    from _relay import percentile

    ok = result.latencies
    return {
        "requests": len(ok), "errors": result.errors, "rps": round(len(ok) / result.seconds, 1),
        "p50_ms": round(percentile(ok, 50) * 1000, 2) if ok else None,
        "p99_ms": round(percentile(ok, 99) * 1000, 2) if ok else None,
        **({"error_samples": result.error_samples} if result.errors else {}),
    }
