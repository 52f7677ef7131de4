"""Issue 22's goals, checked against one `load.py` result: met or not, with the figure that decides.

The ratios load.py prints are rounded for reading (run 49's idle first token, 2.80 / 9.29 ms =
0.3014, printed as 0.3 with two places); a goal is decided on the exact quotient of the measured
figures (requests/s, p99 and p50 milliseconds), so a run a hair past a bound reads as missed.
`stream_latency.py`'s goal (under 5 ms p50 on every path) is `check_stream_latency`.
"""

from __future__ import annotations

PLAIN_THROUGHPUT = 2.0  # Relay's plain requests/s over LiteLLM's, at equal processes, at every concurrency
STREAM_THROUGHPUT = 4.0
IDLE_PLAIN = 0.5  # Relay's idle added latency over LiteLLM's, at most
IDLE_FIRST_TOKEN = 0.3
STREAMS_GROWTH_MB = 300
ADDED_FIRST_TOKEN_MS = 5.0  # stream_latency.py: Relay's added time to first token, p50, on every path, under


def _goal(name: str, measured, bound: str, met: bool) -> dict:
    return {"goal": name, "measured": measured, "bound": bound, "met": bool(met)}


def check(result: dict) -> list[dict]:
    """Each goal of `result` (load.py's last JSON line) that it has the figures for."""
    out = []
    for phase_name, phase in sorted(result.get("phases", {}).items()):
        for level, measured in sorted(phase.items()):
            if level == "idle":
                continue
            figures, where = measured.get("figures", {}), f"{phase_name} {level}"
            for kind, bound in (("plain", PLAIN_THROUGHPUT), ("stream", STREAM_THROUGHPUT)):
                relay, litellm = figures.get(f"relay_{kind}"), figures.get(f"litellm_{kind}")
                if not (relay and litellm and litellm["rps"]):
                    continue
                value = relay["rps"] / litellm["rps"]
                out.append(_goal(f"{kind} req/s ×LiteLLM, {where} ({relay['rps']} / {litellm['rps']})",
                                 round(value, 4), f">= {bound}", value >= bound))
                if kind == "plain":  # "with lower p99"
                    value = relay["p99_ms"] / litellm["p99_ms"]
                    out.append(_goal(f"plain p99 / LiteLLM's, {where} ({relay['p99_ms']} / {litellm['p99_ms']} ms)",
                                     round(value, 4), "< 1", value < 1))
        idle = phase.get("idle", {})
        if "relay" in idle and "litellm" in idle:
            for kind, bound, label in (("plain", IDLE_PLAIN, "idle plain added"),
                                       ("stream", IDLE_FIRST_TOKEN, "idle first token added")):
                relay, litellm = idle["relay"][kind], idle["litellm"][kind]
                exact = relay / litellm if litellm > 0 else None
                out.append(_goal(f"{label} / LiteLLM's ({relay} / {litellm} ms)",
                                 None if exact is None else round(exact, 4), f"<= {bound}",
                                 exact is not None and exact <= bound))
    streams = result.get("open_streams") or {}
    if streams:
        out.append(_goal(f"{streams['streams']} streams open at once", streams["open_at_peak"],
                         f"== {streams['streams']}", streams["open_at_peak"] == streams["streams"]))
        out.append(_goal("their memory growth (MB)", streams["growth_mb"], f"< {STREAMS_GROWTH_MB}",
                         streams["growth_mb"] < STREAMS_GROWTH_MB))
    if "reconcile" in result:
        books = result["reconcile"]
        out.append(_goal("reconcile clean", len(books.get("discrepancies", [])), "ok, 0 discrepancies",
                         bool(books.get("ok"))))
    return out


def check_stream_latency(figures: dict) -> list[dict]:
    """Relay's added time to first token (p50) on SSE, the WebSocket and /v1, from stream_latency.py."""
    out = []
    for path in ("sse", "websocket", "openai"):
        figure = figures.get(f"relay_{path}")
        if figure is not None:
            value = figure["ttft_overhead_p50_ms"]
            out.append(_goal(f"added first token p50, {path} (ms)", value, f"< {ADDED_FIRST_TOKEN_MS}",
                             value < ADDED_FIRST_TOKEN_MS))
    return out


def report(goals: list[dict]) -> str:
    lines = [f"{'met   ' if g['met'] else 'MISSED'}  {g['goal']}: {g['measured']} ({g['bound']})" for g in goals]
    missed = sum(not g["met"] for g in goals)
    lines.append(f"goals: {len(goals) - missed} of {len(goals)} met" + (f", {missed} missed" if missed else ""))
    return "\n".join(lines)
