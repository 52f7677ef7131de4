"""Evaluations: sets uploaded (errors name the line), two models compared on fake upstreams, a budget
stop that reports what finished, evaluation runs kept out of lists and datasets, the command."""

import io
import json
from decimal import Decimal

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command

from accounts.roles import effective_permissions
from agents.models import Conversation
from audit.models import AuditEvent
from billing.models import Budget, ModelPrice, UsageRecord
from tests.conftest import assert_envelope
from tests.reconciled import assert_reconciled
from tests.support.fake_upstream import FakeUpstream, FakeUpstreamConfig
from tests.training.conftest import build, dataset
from training import evaluations
from training.actions.evaluations import create_set, run_evaluation, start_evaluation
from training.models import ConversationExclusion
from training.models_evaluation import Evaluation, EvaluationSet

SETS = "/api/v1/training/evaluation-sets/"
EVALUATIONS = "/api/v1/training/evaluations/"
PROMPT_TOKENS = 10


def upload(client, text: str | bytes, name="set"):
    data = text.encode() if isinstance(text, str) else text
    return client.post(SETS + "upload/", {"name": name, "file": SimpleUploadedFile("set.jsonl", data)},
                       format="multipart")


def jsonl(*rows) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


# --- uploads ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "problem"), [
    ('{"prompt": "a"}\n{"prompt": "b"\n', "Line 2: not valid JSON"),
    ('{"prompt": "a"}\n\n{"reference": "x"}\n', 'Line 3: "prompt" must be a non-empty string.'),
    ('["prompt"]\n', "Line 1: each line must be a JSON object"),
    ('{"prompt": "a", "answer": "b"}\n', "Line 1: unknown field(s) answer"),
    ('{"prompt": "a"}\n{"prompt": "b", "reference": 4}\n', 'Line 2: "reference" must be a string'),
    ('{"prompt": "a", "agent": "nobody"}\n', "Line 1: unknown agent 'nobody'."),
    ('{"prompt": "a", "id": [1]}\n', 'Line 1: "id" must be a string or an integer.'),
    ("", "The file is empty"),
    ("\n  \n", "The file is empty"),
])
def test_upload_errors_name_the_line(client_for, users, text, problem):
    error = assert_envelope(upload(client_for(users["admin"]), text), 400)
    assert error["fields"]["file"][0].startswith(problem), error
    assert not EvaluationSet.objects.exists()


def test_upload_refuses_bytes_that_are_not_utf8_naming_the_line(client_for, users):
    error = assert_envelope(upload(client_for(users["admin"]), b'{"prompt": "a"}\n{"prompt": "\xff"}\n'), 400)
    assert error["fields"]["file"] == ["Line 2: not UTF-8 text."]


def test_upload_is_bounded_in_lines(client_for, users, monkeypatch):
    monkeypatch.setattr(evaluations, "MAX_ITEMS", 2)
    error = assert_envelope(upload(client_for(users["admin"]), jsonl(*[{"prompt": str(i)} for i in range(3)])), 400)
    assert error["fields"]["file"] == ["Line 3: the file has more than 2 items."]


def test_upload_is_bounded_in_bytes(client_for, users, settings):
    settings.RELAY_MAX_UPLOAD_BYTES = 2000
    response = upload(client_for(users["admin"]), jsonl(*[{"prompt": "x" * 100} for _ in range(30)]))
    assert_envelope(response, 413)


def test_upload_keeps_unicode_ids_and_references(client_for, users):
    response = upload(client_for(users["admin"]), jsonl(
        {"prompt": "Combien font ½ + ¼ ? 🙂", "reference": "\\frac{3}{4}", "id": "q-1"},
        {"prompt": "Hauptstadt von Österreich?", "agent": "general", "id": 7}), name="Ünïcode")
    assert response.status_code == 201, response.content
    body = response.json()
    assert (body["name"], body["source"], body["items_count"], body["references_count"]) == ("Ünïcode", "upload", 2, 1)
    items = list(EvaluationSet.objects.get(pk=body["id"]).items.values_list("position", "prompt", "external_id"))
    assert items == [(1, "Combien font ½ + ¼ ? 🙂", "q-1"), (2, "Hauptstadt von Österreich?", "7")]


def test_evaluation_routes_need_manage_training(client_for, users):
    for role in ("user", "viewer", "api_user"):
        client = client_for(users[role])
        assert_envelope(client.get(SETS), 403)
        assert_envelope(upload(client, jsonl({"prompt": "a"})), 403)
        assert_envelope(client.post(EVALUATIONS, {"evaluation_set": 1, "targets": ["x"]}, format="json"), 403)


def test_an_unknown_target_is_refused_before_anything_runs(client_for, users):
    client = client_for(users["admin"])
    created = upload(client, jsonl({"prompt": "a"})).json()
    error = assert_envelope(client.post(EVALUATIONS, {"evaluation_set": created["id"], "targets": ["no-such-model"]},
                                        format="json"), 400)
    assert "Unknown model 'no-such-model'" in error["fields"]["targets"][0]
    assert not Evaluation.objects.exists()


# --- runs on the fake upstream ----------------------------------------------------------------


@pytest.fixture
def two_models(transactional_db):
    """fake-a answers "42" at 0.001/0.002 per 1k tokens, fake-b "Paris" at ten times that; one word each."""
    from agents.actions.endpoints import create_endpoint

    servers = {}
    with FakeUpstream(FakeUpstreamConfig(reply="42", tokens=1, prompt_tokens=PROMPT_TOKENS)) as a, \
            FakeUpstream(FakeUpstreamConfig(reply="Paris", tokens=1, prompt_tokens=PROMPT_TOKENS)) as b:
        for name, server, price in (("fake-a", a, "0.001"), ("fake-b", b, "0.01")):
            create_endpoint(name, deployments=[{"name": "primary", "base_url": server.base_url,
                                                "upstream_model": name}])
            ModelPrice.objects.create(model=name, input_per_1k=Decimal(price), output_per_1k=2 * Decimal(price))
            servers[name] = server
        yield servers


def _set(users, *rows) -> EvaluationSet:
    items = evaluations.parse_upload(jsonl(*rows).encode())
    return create_set(users["admin"].organization, actor=users["admin"], name="compare", items=items)


MATH_AND_TEXT = ({"prompt": "What is 6 times 7?", "reference": "42.0"},
                 {"prompt": "What is the capital of France?", "reference": "Paris"},
                 {"prompt": "Say something."})


def test_an_evaluation_compares_two_models_side_by_side(two_models, users, client_for, settings):
    settings.CELERY_TASK_ALWAYS_EAGER = True  # the task runs when the start commits, here
    client = client_for(users["admin"])
    evaluation_set = _set(users, *MATH_AND_TEXT)
    response = client.post(EVALUATIONS, {"evaluation_set": evaluation_set.pk, "targets": ["fake-a", "fake-b"]},
                           format="json")
    assert response.status_code == 202, response.content
    started = response.json()
    assert (started["state"], started["processed"], started["total"], started["progress"]) == ("done", 6, 6, 1.0)
    # The address its key's ranges are checked against before each run (training.actions.evaluations._refusal).
    assert Evaluation.objects.get(pk=started["id"]).client_ip == "127.0.0.1"

    report = client.get(f"{EVALUATIONS}{started['id']}/comparison/").json()
    assert (report["state"], report["stopped_by_budget"], report["finished"], report["total"]) == ("done", False, 6, 6)
    a, b = report["targets"]
    assert (a["target"], b["target"]) == ("fake-a", "fake-b")
    # "42" matches the math reference 42.0 exactly and shares no word with "Paris"; "Paris" the other way round.
    assert a["agreement"] == {"exact_match": 1.0, "exact_scored": 1, "f1": 0.0, "f1_scored": 1}
    assert b["agreement"] == {"exact_match": 0.0, "exact_scored": 1, "f1": 1.0, "f1_scored": 1}
    # Same tokens (10 in, 1 out per run), ten times the price.
    assert a["cost"] == {"total": "0.000036", "per_item": "0.000012"}
    assert b["cost"] == {"total": "0.00036", "per_item": "0.00012"}
    for figures in (a, b):
        assert (figures["items"], figures["finished"], figures["complete"]) == (3, 3, 3)
        assert figures["quality"]["count"] == 3 and figures["quality"]["mean"] is not None
        assert sum(bucket["count"] for bucket in figures["quality"]["histogram"]) == 3
        assert figures["latency_ms"]["p50"] is not None and figures["latency_ms"]["p95"] >= figures["latency_ms"]["p50"]

    results = client.get(f"{EVALUATIONS}{started['id']}/results/").json()
    rows = results["results"] if isinstance(results, dict) else results
    assert [(r["position"], r["target"], r["answer"]) for r in rows] == [
        (1, "fake-a", "42"), (1, "fake-b", "Paris"), (2, "fake-a", "42"), (2, "fake-b", "Paris"),
        (3, "fake-a", "42"), (3, "fake-b", "Paris")]

    # Charged to the starter's own evaluation key, revoked once it finished; audited start and end.
    evaluation = Evaluation.objects.select_related("api_key").get(pk=started["id"])
    assert evaluation.api_key.owner == users["admin"] and evaluation.api_key.revoked_at is not None
    assert set(evaluation.api_key.scopes) <= set(effective_permissions(users["admin"]))
    records = UsageRecord.objects.filter(api_key=evaluation.api_key)
    assert records.count() == 6 and sum(r.cost for r in records) == Decimal("0.000396")
    events = AuditEvent.objects.filter(resource=f"evaluation:{evaluation.pk}")
    assert sorted(events.values_list("action", flat=True)) == ["evaluation.finished", "evaluation.started"]
    assert_reconciled()


def test_evaluation_runs_stay_out_of_conversation_lists_and_datasets(two_models, users, client_for, consent):
    admin = users["admin"]
    client = client_for(admin)
    evaluation = start_evaluation(_set(users, *MATH_AND_TEXT), actor=admin, targets=["fake-a"], enqueue=False)
    run_evaluation(evaluation.pk)
    runs = Conversation.objects.filter(user=admin)
    assert runs.count() == 3
    assert set(ConversationExclusion.objects.filter(conversation__in=runs).values_list("reason", flat=True)) == {
        "evaluation"}

    listed = client.get("/api/v1/conversations/").json()
    listed = listed["results"] if isinstance(listed, dict) else listed
    assert listed == []
    chat = client.get("/chat/")
    assert chat.status_code == 200 and not chat.context["conversations"]
    # still the owner's to read by id
    assert client.get(f"/api/v1/conversations/{runs.first().pk}/").status_code == 200

    version = build(dataset(admin.organization))
    assert version.state == "done" and version.rows == 0
    assert build(dataset(admin.organization, include_evaluation=True)).rows == 3  # only when asked for


def test_an_evaluation_stopped_by_its_budget_reports_what_it_finished(two_models, users):
    from tests.billing.test_live_budgets import prompt_tokens

    admin, query, output = users["admin"], "What is 6 times 7?", 10
    tokens_in = prompt_tokens(query)  # with the general agent's tools, which fake-a is sent
    two_models["fake-a"].configure(tokens=output, prompt_tokens=tokens_in)
    one_run = Decimal(tokens_in * 1000 + output * 2000) / 10**9  # nano-dollars per token of fake-a
    budget = Budget.objects.create(organization=admin.organization, scope="user", user=admin, period="monthly",
                                   limit_usd=one_run * Decimal("2.5"), hard=True)
    evaluation_set = _set(users, *[{"prompt": query, "reference": "42", "id": i} for i in range(4)])
    evaluation = start_evaluation(evaluation_set, actor=admin, targets=["fake-a"], max_tokens=output, enqueue=False)
    evaluation = run_evaluation(evaluation.pk)

    assert evaluation.state == "stopped_by_budget" and evaluation.stopped_by_budget
    assert (evaluation.processed, evaluation.total) == (2, 4)
    assert evaluation.message.startswith("Stopped by a budget after 2 of 4 runs")
    report = evaluations.comparison(evaluation)
    assert report["stopped_by_budget"] and report["targets"][0]["finished"] == 2
    assert "stopped_by_budget: 2 of 4 runs finished" in evaluations.comparison_table(report)
    records = UsageRecord.objects.filter(user=admin)
    assert records.count() == 2 and sum(r.cost for r in records) == 2 * one_run <= budget.limit_usd
    finished = AuditEvent.objects.get(action="evaluation.finished", resource=f"evaluation:{evaluation.pk}")
    assert finished.metadata["stopped_by_budget"] is True and finished.metadata["finished"] == 2
    # no conversation was left open by the refused run
    assert Conversation.objects.filter(user=admin).count() == 2
    assert_reconciled()


def test_run_evaluation_command_prints_the_comparison_table(two_models, users):
    evaluation_set = _set(users, *MATH_AND_TEXT)
    out = io.StringIO()
    call_command("run_evaluation", str(evaluation_set.pk), "--model", "fake-a", "--model", "fake-b", stdout=out)
    lines = out.getvalue().splitlines()
    header = next(line for line in lines if line.startswith("target"))
    assert "exact match" in header and "cost/item" in header
    row_a = next(line for line in lines if line.startswith("fake-a")).split()
    row_b = next(line for line in lines if line.startswith("fake-b")).split()
    assert row_a[1] == row_b[1] == "3/3"
    assert row_a[-2:] == ["0.000036", "0.000012"] and row_b[-2:] == ["0.00036", "0.00012"]
    assert lines[-1] == "done: 6 of 6 runs finished"


def test_run_evaluation_command_refuses_unknown_models(users):
    evaluation_set = create_set(users["admin"].organization, actor=users["admin"], name="s",
                                items=evaluations.parse_upload(b'{"prompt": "a"}'))
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="Unknown model 'nope'"):
        call_command("run_evaluation", str(evaluation_set.pk), "--model", "nope")
