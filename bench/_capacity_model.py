"""The capacity model of bench/capacity.py: calibration figures in, predictions out (no I/O).

The model, for a machine of `cores` cores whose every process is CPU-bound at saturation:

    requests/s = available core-ms per second / CPU ms per request of everything on the machine
    available  = cores x 1000 - what other programs used (measured) - fixed costs (Celery's ticks)
    CPU/request = Relay + PostgreSQL + Redis + the load generator + the upstream (each measured on
                  one instance at the concurrency one instance of the cluster will see)
                  + nginx in front (measured in front of one instance)

capped at instances x 1000 / Relay's ms per request (one Relay process uses at most one core).
Cores for a load follow from the same figures: one core is 1,000 CPU ms per second, so R
requests/s need R x (ms per request) / 1000 cores of each component; open streams need their
CPU per stream-second (held streams) plus their start and settle, once per stream.
"""

from __future__ import annotations

# Per-request terms read from the run straight at one instance; nginx comes from the run through it.
DIRECT_TERMS = ("relay", "postgresql", "redis", "load generator", "upstream", "interrupts")
SERVING = ("relay", "postgresql", "redis")


def per_request_terms(direct: dict, via_nginx: dict, direct_same_connections: dict) -> dict[str, float]:
    """CPU ms per request of every program on the machine at saturation (load figures with
    `cpu_ms_per_request`): `direct` straight at one instance, `via_nginx` through nginx and
    `direct_same_connections` straight at it with as many connections as `via_nginx`. nginx's
    term is its own CPU plus the interrupts of the hop it adds."""
    terms = {name: direct["cpu_ms_per_request"].get(name, 0.0) for name in DIRECT_TERMS}
    hop = (via_nginx["cpu_ms_per_request"].get("interrupts", 0.0)
           - direct_same_connections["cpu_ms_per_request"].get("interrupts", 0.0))
    terms["nginx"] = via_nginx["cpu_ms_per_request"].get("nginx", 0.0) + max(0.0, hop)
    return terms


def predict_cluster(terms: dict[str, float], *, instances: int, cores: int, background_ms_per_s: float,
                    fixed_ms_per_s: float) -> dict:
    """Plain requests/s of `instances` Relay processes behind nginx on this machine."""
    total = sum(terms.values())
    available = max(0.0, cores * 1000 - background_ms_per_s - fixed_ms_per_s)
    by_cpu = available / total if total else 0.0
    by_relay = instances * 1000 / terms["relay"] if terms["relay"] else float("inf")
    idle_machine = (cores * 1000 - fixed_ms_per_s) / total if total else 0.0
    return {
        "instances": instances, "cores": cores, "rps": round(min(by_cpu, by_relay), 1),
        "bound": "cpu" if by_cpu <= by_relay else "relay processes",
        "available_core_ms_per_s": round(available, 1), "background_ms_per_s": round(background_ms_per_s, 1),
        "fixed_ms_per_s": round(fixed_ms_per_s, 1),
        "cpu_ms_per_request": {k: round(v, 3) for k, v in terms.items()}, "total_cpu_ms_per_request": round(total, 3),
        "rps_by_cpu": round(by_cpu, 1), "rps_by_relay_processes": round(by_relay, 1),
        "rps_on_an_idle_machine": round(min(idle_machine, by_relay), 1),
    }


def per_core(terms: dict[str, float]) -> dict:
    """Requests/s one core gives: of Relay alone, and of the whole machine's stack."""
    return {"relay": round(1000 / terms["relay"], 1) if terms["relay"] else None,
            "whole_stack": round(1000 / sum(terms.values()), 1) if sum(terms.values()) else None}


def cores_for_requests(terms: dict[str, float], rps: float) -> dict[str, float]:
    """Cores of Relay, PostgreSQL and Redis (and nginx) that serve `rps` plain requests/s."""
    out = {name: round(rps * terms.get(name, 0.0) / 1000, 2) for name in (*SERVING, "nginx")}
    out["relay + postgresql + redis"] = round(sum(out.get(name, 0.0) for name in SERVING), 2)
    return out


def stream_terms(plain: dict, stream: dict, held: dict, chunks: int) -> dict:
    """Per component: `start` CPU ms to open and settle one stream (as a plain request), `chunk`
    CPU ms per relayed chunk ((a `chunks`-chunk stream - a plain request) / chunks), and `held`
    CPU ms per second of one open stream at the held streams' pace."""
    out = {}
    for name in (*SERVING, "nginx"):
        p = plain["cpu_ms_per_request"].get(name, 0.0)
        s = stream["cpu_ms_per_request"].get(name, 0.0)
        out[name] = {"start": round(p, 3), "chunk": round(max(0.0, s - p) / chunks, 4),
                     "held": round(held["cpu_ms_per_stream_second"].get(name, 0.0), 4)}
    return out


def cores_for_streams(terms: dict, *, streams: int, tokens_per_s: float, seconds: float,
                      held_tokens_per_s: float) -> dict[str, float]:
    """Cores of each component that keep `streams` streams open at once, each `seconds` long at
    `tokens_per_s`: every stream-second costs `held` (measured at `held_tokens_per_s`) plus the
    extra chunks' cost, and streams/seconds streams start (and settle) every second."""
    out = {}
    for name, t in terms.items():
        per_stream_second = t["held"] + max(0.0, tokens_per_s - held_tokens_per_s) * t["chunk"]
        out[name] = round((streams * per_stream_second + streams / seconds * t["start"]) / 1000, 2)
    out["relay + postgresql + redis"] = round(sum(out.get(name, 0.0) for name in SERVING), 2)
    return out


def error_pct(measured: float, predicted: float) -> float | None:
    """(predicted - measured) / measured, in %."""
    return round((predicted - measured) / measured * 100, 1) if measured else None
