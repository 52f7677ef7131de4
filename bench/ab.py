"""A/B: two builds or settings of Relay under the same plain load, interleaved, CPU normalized by the load generator's.

Run: python bench/ab.py [--b-cwd ../other-checkout] [--a-env NAME=VALUE ...] [--b-env NAME=VALUE ...]
                        [--a-hide MODULE ...] [--b-hide MODULE ...] [--pairs 6]
                        [--processes 2] [--concurrency 32 64] [--seconds 6]

Each side is `bench/load.py` (Relay alone: no LiteLLM, no floors, no streams, no idle phase) run
from a checkout (`--a-cwd`, `--b-cwd`; default this one) with its own environment, by this
interpreter and so with this venv's packages (a side that needs others adds them with `--b-env
PYTHONPATH=...`). `--a-hide hiredis` makes that side's processes fail to import the module (an
optional accelerator measured against its absence in one venv).

Why normalized: this 2-core VM swings by up to ±30% between runs minutes apart, and every process
on it swings together. Relay's CPU per request over the load generator's, which does the same work
per request for either side, stayed within ±3% across such swings (bench/README.md, 2026-12-06)
where requests/s and Relay's own CPU per request did not. A pair runs A and B back to back, the
order alternating; per row the summary gives the medians of requests/s and of Relay's CPU per
request, the mean normalized CPU of each side, its change, and in how many pairs B's was lower.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def rows_of(result: dict) -> dict[str, dict]:
    """{"p2 c32": {rps, p99_ms, relay_cpu, generator_cpu}} of one load.py result (Relay's plain rows)."""
    rows = {}
    for processes, phase in result["phases"].items():
        for level, figures in phase.items():
            plain = figures.get("figures", {}).get("relay_plain") if level.startswith("c") else None
            if plain:
                cpu = plain["cpu_ms_per_request"]
                rows[f"{processes} {level}"] = {"rps": plain["rps"], "p99_ms": plain["p99_ms"],
                                                "relay_cpu": cpu["relay"], "generator_cpu": cpu["load generator"]}
    return rows


def summarize(runs: list[dict]) -> dict[str, dict]:
    """runs: [{"pair": n, "side": "A" | "B", "rows": rows_of(...)}] → per row, each side's figures and B's change."""
    out = {}
    for row in sorted({row for run in runs for row in run["rows"]}):
        sides, normalized = {}, {}
        for side in ("A", "B"):
            figures = {run["pair"]: run["rows"][row] for run in runs if run["side"] == side and row in run["rows"]}
            normalized[side] = {pair: f["relay_cpu"] / f["generator_cpu"] for pair, f in figures.items()
                                if f["generator_cpu"]}
            sides[side] = {"rps_median": statistics.median(f["rps"] for f in figures.values()),
                           "relay_cpu_median": statistics.median(f["relay_cpu"] for f in figures.values()),
                           "normalized_cpu_mean": statistics.mean(normalized[side].values())}
        both = sorted(set(normalized["A"]) & set(normalized["B"]))
        change = sides["B"]["normalized_cpu_mean"] / sides["A"]["normalized_cpu_mean"] - 1
        out[row] = {**{f"{side}_{k}": round(v, 2) for side, figures in sides.items() for k, v in figures.items()},
                    "normalized_cpu_change_pct": round(change * 100, 1),
                    "b_lower_in": f"{sum(normalized['B'][p] < normalized['A'][p] for p in both)}/{len(both)}"}
    return out


def hiding(modules: list[str]) -> str | None:
    """A directory whose modules of these names raise ImportError, for the front of PYTHONPATH."""
    if not modules:
        return None
    directory = tempfile.mkdtemp(prefix="relay-ab-hide-")
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    for name in modules:
        Path(directory, f"{name}.py").write_text(f"raise ImportError('{name} hidden by bench/ab.py')\n")
    return directory


def run_side(cwd: Path, env: dict, args) -> dict:
    command = [sys.executable, "load.py", "--no-litellm", "--no-floors", "--rounds", "1", "--streams", "0",
               "--idle-requests", "0", "--seconds", str(args.seconds),
               "--processes", *map(str, args.processes), "--concurrency", *map(str, args.concurrency)]
    done = subprocess.run(command, cwd=cwd / "bench", env=env, capture_output=True, text=True, timeout=1800)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        raise SystemExit(f"load.py failed in {cwd}:\n{done.stderr[-2000:]}")
    return rows_of(json.loads(lines[-1]))


def side_env(assignments: list[str], hidden: list[str]) -> dict:
    env = dict(os.environ)
    for assignment in assignments:
        name, _, value = assignment.partition("=")
        env[name] = value
    if shim := hiding(hidden):
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [shim, env.get("PYTHONPATH")]))
    return env


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for side in ("a", "b"):
        parser.add_argument(f"--{side}-cwd", type=Path, default=ROOT, help="the checkout this side runs")
        parser.add_argument(f"--{side}-env", nargs="*", default=[], metavar="NAME=VALUE")
        parser.add_argument(f"--{side}-hide", nargs="*", default=[], metavar="MODULE")
    parser.add_argument("--pairs", type=int, default=6)
    parser.add_argument("--processes", type=int, nargs="+", default=[2])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--seconds", type=float, default=6)
    args = parser.parse_args()
    sides = {"A": (args.a_cwd.resolve(), side_env(args.a_env, args.a_hide)),
             "B": (args.b_cwd.resolve(), side_env(args.b_env, args.b_hide))}
    runs = []
    for pair in range(1, args.pairs + 1):
        for side in ("A", "B") if pair % 2 else ("B", "A"):
            rows = run_side(*sides[side], args)
            runs.append({"pair": pair, "side": side, "rows": rows})
            print(f"pair {pair} {side}: " + "; ".join(
                f"{row} {f['rps']:.0f} req/s, Relay {f['relay_cpu']:.2f} ms/request "
                f"({f['relay_cpu'] / f['generator_cpu']:.1f}× the load generator's)" for row, f in rows.items()),
                flush=True)
    print(json.dumps({"runs": runs, "summary": summarize(runs)}))


if __name__ == "__main__":
    main()
