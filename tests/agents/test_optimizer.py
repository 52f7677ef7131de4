"""The cost optimizer: classifier, routing, response cache, trimming, per-organization switches,
token rate limits on the model-call endpoints, and the benchmark script."""

import json
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from accounts.actions.keys import create_api_key
from agents.optimizer import cache_key, classify, pick_model
from agents.optimizer.routing import Candidate
from agents.optimizer.trimming import trim_messages
from billing.models import OptimizerSettings, UsageRecord
from tests.conftest import assert_envelope

ROOT = Path(__file__).resolve().parents[2]

# Phrasings of our own (not the shared workload's): the classifier must generalize.
SIMPLE = ["What is the boiling point of water in Fahrenheit?", "Who painted the Mona Lisa?", "Calculate 17 * 23.",
          "Define photosynthesis in one sentence.", "How many days are in a leap year?", "print(len('relay'))"]
COMPLEX = [
    "Design an event-sourcing system for an online bookstore, compare it with a CRUD design, and recommend one.",
    "Implement a thread-safe rate limiter in Go, write benchmarks, and analyse its behaviour under contention.",
    "Prove that there are infinitely many primes, then extend the argument to primes of the form 4k+3.",
    "Evaluate three strategies for migrating a legacy Oracle schema to PostgreSQL, with risks and a rollback plan.",
    "Analyze how a 2% rise in interest rates would affect housing, banks and consumer spending, step by step.",
]


@pytest.mark.parametrize("query", SIMPLE)
def test_short_lookups_are_simple(query):
    assert classify(query).label == "simple", classify(query)


@pytest.mark.parametrize("query", COMPLEX)
def test_multi_requirement_open_work_is_complex(query):
    assert classify(query).label == "complex", classify(query)


def test_writing_and_explaining_is_never_simple():
    for query in ("Explain how DNS resolution works.", "Write a limerick about databases.",
                  "Solve x**2 - 5*x + 6 = 0."):
        assert classify(query).label == "medium", query


def test_routing_sends_only_simple_queries_to_the_cheap_model():
    mini = Candidate("small", Decimal("0.0001"), Decimal("0.0002"), "mini")
    large = Candidate("big", Decimal("0.005"), Decimal("0.015"), "large")
    assert pick_model("simple", [large, mini], "big") == "small"
    assert pick_model("medium", [large, mini], "small") == "big"
    assert pick_model("complex", [mini, large], "small") == "big"
    assert pick_model("simple", [large], "big") == "big"  # nothing to choose from


def test_cache_key_normalizes_the_query_and_separates_everything_else():
    fields = {"agent": "general", "model": "m", "organization": "1.1", "history": "h", "documents": "d"}
    base = cache_key("What is  Relay?", **fields)
    assert base == cache_key("what is relay?", **fields)
    for changed in ({"agent": "rag"}, {"model": "n"}, {"organization": "2.1"}, {"history": "i"}, {"documents": "e"}):
        assert cache_key("What is Relay?", **{**fields, **changed}) != base, changed


def test_trimming_keeps_the_system_prompt_and_latest_turns():
    turns = [{"role": "system", "content": "Be brief."}]
    for i in range(30):
        turns += [{"role": "user", "content": f"question {i} " + "word " * 40},
                  {"role": "assistant", "content": f"answer {i} " + "word " * 40}]
    turns.append({"role": "user", "content": "the latest question"})
    trimmed = trim_messages(turns, 500)
    from agents.tokenizer import count_message_tokens

    assert count_message_tokens(trimmed) <= 500 < count_message_tokens(turns)
    assert trimmed[0] == turns[0] and trimmed[-1] == turns[-1]
    assert trimmed[1]["role"] == "user" and trimmed[-3:] == turns[-3:]
    assert trim_messages(turns[:3], 500) == turns[:3]


# -- through the API ------------------------------------------------------------------------------


def ask(client, query, **extra):
    response = client.post("/api/v1/query", {"query": query, "agent_type": "math", **extra}, format="json")
    assert response.status_code == 200, response.content
    return response.json()


def record_of(answer) -> UsageRecord:
    return UsageRecord.objects.get(message_id=answer["message_id"])


@pytest.mark.django_db
def test_a_repeated_question_is_answered_from_the_cache_at_zero_cost(users, other_users, client_for):
    client = client_for(users["user"], via="api_key")
    first = ask(client, "Compute 12 * 7.")
    second = ask(client, "  compute 12 *   7. ")
    assert first["answer"] == second["answer"] and "84" in second["answer"]
    assert first["tool_calls"] and not second["tool_calls"]  # replayed, nothing re-run
    assert (record_of(first).cached, record_of(first).cost > 0) == (False, True)
    hit = record_of(second)
    assert hit.cached and hit.cost == 0 and hit.status == "complete" and hit.output_tokens > 0
    assert Decimal(second["usage"]["cost"]) == 0
    assert not record_of(ask(client, "Compute 12 * 7.", cache=False)).cached
    assert not record_of(ask(client_for(other_users["user"], via="api_key"), "Compute 12 * 7.")).cached


@pytest.mark.django_db
def test_admins_can_turn_each_strategy_off(org, users, client_for):
    client = client_for(users["user"], via="api_key")
    OptimizerSettings.objects.create(organization=org, cache_enabled=False, routing_enabled=False)
    ask(client, "Compute 3 * 5.")
    assert not record_of(ask(client, "Compute 3 * 5.")).cached
    complex_query = COMPLEX[2]
    assert ask(client, complex_query)["model"] == "local-mini"  # the default, not routed


@pytest.mark.django_db
def test_unnamed_models_are_routed_by_complexity_and_named_ones_never(users, client_for):
    client = client_for(users["user"], via="api_key")
    assert ask(client, "Compute 6 * 7.")["model"] == "local-mini"
    assert ask(client, COMPLEX[2])["model"] == "local-large"
    assert ask(client, COMPLEX[2] + " ", model="local-mini")["model"] == "local-mini"
    key = create_api_key(users["user"], "mini only", allowed_models=["local-mini"])
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {key.secret}")
    assert ask(client, COMPLEX[2] + "  ")["model"] == "local-mini"  # the key's allow-list bounds routing


@pytest.mark.django_db
def test_long_conversations_are_trimmed_before_pricing(org, users, client_for):
    client = client_for(users["user"], via="api_key")
    history = [{"role": r, "content": "lorem ipsum " * 300} for r in ("user", "assistant") * 4]
    body = {"model": "local-mini", "messages": [*history, {"role": "user", "content": "Compute 2 * 2."}]}
    full = client.post("/v1/chat/completions", body, format="json").json()["usage"]["prompt_tokens"]
    OptimizerSettings.objects.create(organization=org, history_token_budget=500)
    trimmed = client.post("/v1/chat/completions", body, format="json").json()["usage"]["prompt_tokens"]
    assert trimmed <= 500 < full


@pytest.mark.django_db
def test_token_rate_limits_answer_429_with_retry_after_and_remaining_headers(users, client_for):
    from rest_framework.test import APIClient

    client = APIClient()
    key = create_api_key(users["user"], "limited", requests_per_minute=5, tokens_per_minute=3000)
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {key.secret}")
    response = client.post("/api/v1/query", {"query": "Compute 1 + 1.", "agent_type": "math", "max_tokens": 100},
                           format="json")
    assert response.status_code == 200
    assert response["X-RateLimit-Remaining-Requests"] == "4"
    remaining = int(response["X-RateLimit-Remaining-Tokens"])
    assert 2500 < remaining < 2900
    stream = client.post("/api/v1/stream", {"query": "Compute 2 + 2.", "agent_type": "math", "max_tokens": 100},
                         format="json")
    assert int(stream["X-RateLimit-Remaining-Tokens"]) < remaining and stream["X-RateLimit-Remaining-Requests"] == "3"
    refused = client.post("/api/v1/query", {"query": "Compute 3 + 3.", "agent_type": "math", "max_tokens": 3000},
                          format="json")
    assert_envelope(refused, 429, "rate_limited")
    assert int(refused["Retry-After"]) >= 1
    chat = client.post("/v1/chat/completions", {"model": "local-mini", "max_tokens": 50,
                                                "messages": [{"role": "user", "content": "Compute 4 + 4."}]},
                       format="json")
    assert chat.status_code == 200 and "X-RateLimit-Remaining-Tokens" in chat


def run_bench(path: Path, capsys) -> dict:
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import cost_optimizer
    finally:
        sys.path.pop(0)
    assert cost_optimizer.main(["--workload", str(path)]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_bench_reports_savings_without_downgrading_complex_queries(tmp_path, capsys):
    rows = [{"id": i, "agent": "general", "query": q, "complexity": c, "max_tokens": 500}
            for i, (q, c) in enumerate([(q, "simple") for q in SIMPLE] + [(q, "complex") for q in COMPLEX]
                                       + [(SIMPLE[0], "simple"), (COMPLEX[0], "complex")])]
    workload = tmp_path / "queries.jsonl"
    workload.write_text("\n".join(json.dumps(r) for r in rows))
    figures = run_bench(workload, capsys)
    assert set(figures) == {"baseline_cost", "optimized_cost", "reduction_pct", "cache_hit_rate",
                            "complex_downgraded"}
    assert figures["complex_downgraded"] == 0 and figures["cache_hit_rate"] == pytest.approx(2 / len(rows), 1e-3)
    assert 0 < figures["optimized_cost"] < figures["baseline_cost"]


def test_bench_on_the_shared_workload_saves_at_least_30_percent(capsys):
    shared = ROOT.parent / "shared" / "workloads" / "queries.jsonl"
    if not shared.is_file():
        pytest.skip("the shared workload is not next to this checkout")
    figures = run_bench(shared, capsys)
    assert figures["reduction_pct"] >= 30 and figures["complex_downgraded"] == 0
