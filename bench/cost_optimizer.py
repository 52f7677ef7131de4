"""Cost optimizer benchmark: replay a labelled workload without and with optimization.

    python bench/cost_optimizer.py [--workload PATH]

PATH defaults to ../shared/workloads/queries.jsonl next to the repository (one JSON object a
line: id, agent, query, complexity, max_tokens). Two passes:

- baseline: every query on the strongest model (gpt-4o), no cache;
- optimized: the runner's own optimizer functions — `classify` + `pick_model` between gpt-4o and
  gpt-4o-mini, and the exact-match response cache (`cache_key` + the in-process store) — a hit
  costs nothing.

Costs use the seeded price table (billing.pricing.DEFAULT_PRICES, docs/design.md section 3) at the
same nano-dollar rounding as the ledger. Input tokens: the agent's system prompt plus the query
as a chat, counted by the offline tokenizer (agents/tokenizer.py). Output tokens: the query's
`max_tokens` — the worst case the ledger reserves, and what a capped answer would use — the same
in both passes, so the comparison isolates routing and caching. No server or database needed.
The last line is one JSON object: baseline_cost, optimized_cost, reduction_pct, cache_hit_rate,
complex_downgraded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from decimal import Decimal
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STRONG, CHEAP = "gpt-4o", "gpt-4o-mini"


def setup_django() -> None:
    sys.path.insert(0, str(REPO))
    from django.conf import settings

    if settings.configured:  # imported by a test: Django is already set up
        return
    # The embedded mode's settings: nothing here touches a database, Redis or the network.
    for name in ("DATABASE_URL", "REDIS_URL"):
        os.environ.pop(name, None)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "relay.settings")
    import django

    django.setup()


def load(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as lines:
        return [json.loads(line) for line in lines if line.strip()]


def candidates():
    from agents.optimizer.routing import Candidate
    from billing.pricing import DEFAULT_PRICES

    return [Candidate(name, Decimal(DEFAULT_PRICES[name][0]), Decimal(DEFAULT_PRICES[name][1]), tier)
            for name, tier in ((STRONG, "large"), (CHEAP, "mini"))]


def cost_nanos(model: str, input_tokens: int, output_tokens: int) -> int:
    from billing.money import nanos_per_token
    from billing.pricing import DEFAULT_PRICES

    inp, out = DEFAULT_PRICES[model]
    return input_tokens * nanos_per_token(Decimal(inp)) + output_tokens * nanos_per_token(Decimal(out))


def input_tokens(agent_name: str, query: str) -> int:
    from agents.registry import get_agent
    from agents.tokenizer import count_message_tokens

    agent = get_agent(agent_name)
    system = [{"role": "system", "content": agent.system_prompt}] if agent else []
    return count_message_tokens([*system, {"role": "user", "content": query}])


async def replay(rows: list[dict]) -> dict:
    from agents.optimizer import cache_key, classify, pick_model
    from agents.optimizer.cache import LocalStore, ResponseCache
    from agents.optimizer.classifier import COMPLEX

    choices = candidates()
    cache = ResponseCache(LocalStore(max_entries=len(rows) + 1))
    baseline = optimized = hits = downgraded = 0
    routed = {STRONG: 0, CHEAP: 0}
    for row in rows:
        tokens_in, tokens_out = input_tokens(row["agent"], row["query"]), int(row["max_tokens"])
        baseline += cost_nanos(STRONG, tokens_in, tokens_out)
        model = pick_model(classify(row["query"]).label, choices, STRONG)
        # One caller with one document set: what answer_key would add is the same for every row.
        key = cache_key(row["query"], agent=row["agent"], model=model, organization="bench", history="-",
                        documents="-")
        if await cache.get(key) is not None:
            hits += 1
            continue
        routed[model] += 1
        downgraded += row["complexity"] == COMPLEX and model != STRONG
        optimized += cost_nanos(model, tokens_in, tokens_out)
        await cache.put(key, f"answer {row['id']}", ttl=3600)
    return {"baseline": baseline, "optimized": optimized, "hits": hits, "downgraded": downgraded,
            "routed": routed, "queries": len(rows)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", type=Path, default=REPO.parent / "shared" / "workloads" / "queries.jsonl")
    args = parser.parse_args(argv)
    if not args.workload.is_file():
        parser.error(f"no workload at {args.workload}")
    setup_django()
    from billing.money import cost_usd

    rows = load(args.workload)
    if not rows:
        parser.error(f"{args.workload} has no queries")
    figures = asyncio.run(replay(rows))
    baseline, optimized = cost_usd(figures["baseline"]), cost_usd(figures["optimized"])
    reduction = (1 - optimized / baseline) * 100 if baseline else Decimal(0)
    hit_rate = figures["hits"] / figures["queries"]
    print(f"workload:            {args.workload} ({figures['queries']} queries)")
    print(f"baseline (all {STRONG}): ${baseline:.6f}")
    print(f"optimized:           ${optimized:.6f}  (model calls: {figures['routed'][STRONG]} on {STRONG}, "
          f"{figures['routed'][CHEAP]} on {CHEAP}; {figures['hits']} cache hits)")
    print(f"reduction:           {reduction:.1f}%")
    print(f"cache hit rate:      {hit_rate:.1%}")
    print(f"complex downgraded:  {figures['downgraded']}")
    print(json.dumps({"baseline_cost": float(round(baseline, 6)), "optimized_cost": float(round(optimized, 6)),
                      "reduction_pct": float(round(reduction, 2)), "cache_hit_rate": round(hit_rate, 4),
                      "complex_downgraded": figures["downgraded"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
