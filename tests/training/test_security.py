"""An outsider's attacks on training: each test is a hole found and closed (issue 21's review)."""

import json
from collections import Counter

import pytest
from django.contrib.auth.models import Group
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.actions.keys import create_api_key, revoke_api_key
from accounts.models import APIKey, User
from accounts.roles import effective_permissions
from agents.actions.conversations import delete_conversation
from agents.models import Conversation, Message
from audit.models import AuditEvent
from tests.conftest import assert_envelope
from tests.training.conftest import build, conversation, dataset, lines_of, turn
from tests.training.test_evaluations import EVALUATIONS, SETS, _set, jsonl, two_models  # noqa: F401  (a fixture)
from training import storage
from training.actions import builds
from training.actions.consent import set_consent
from training.actions.evaluations import run_evaluation, start_evaluation
from training.models import ConversationExclusion, VersionConversation
from training.models_evaluation import Evaluation, EvaluationSet
from training.rows import conversation_rows

OPENAI = "sk-proj-abcdefghijklmnopqrstuv"
CARD = "4111 1111 1111 1111"


def test_an_evaluation_started_through_a_key_stays_within_that_key(two_models, users):  # noqa: F811
    """The evaluation key is minted under the key that asked: its models, scopes and key budgets bind it."""
    admin = users["admin"]
    narrow = create_api_key(admin, "fake-a only", allowed_models=["fake-a"])
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {narrow.secret}")
    upload = client.post(SETS + "upload/", {"name": "s", "file": SimpleUploadedFile(
        "s.jsonl", jsonl({"prompt": "What is 6 times 7?"}).encode())}, format="multipart")
    assert upload.status_code == 201, upload.content
    response = client.post(EVALUATIONS, {"evaluation_set": upload.json()["id"], "targets": ["fake-a", "fake-b"]},
                           format="json")
    assert response.status_code == 202, response.content

    evaluation = Evaluation.objects.select_related("api_key").get(pk=response.json()["id"])
    assert evaluation.api_key.parent_id == narrow.key.pk
    assert evaluation.api_key.allowed_models == ["fake-a"]
    assert set(evaluation.api_key.scopes) <= set(narrow.key.scopes) <= set(effective_permissions(admin))
    statuses = dict(evaluation.results.values_list("target", "status"))
    assert statuses["fake-a"] == "complete" and statuses["fake-b"] != "complete"
    assert not two_models["fake-b"].requests  # the model the key may not use was never asked


def _call_rows(tool_input, tool_output):
    messages = [
        {"id": "00000000-0000-0000-0000-000000000001", "parent_id": None, "role": "user", "content": "go",
         "tool_calls": None, "agent": "", "model": "", "quality_score": None, "feedback": 0, "status": "complete",
         "selected": False},
        {"id": "00000000-0000-0000-0000-000000000002", "parent_id": "00000000-0000-0000-0000-000000000001",
         "role": "assistant", "content": "done", "agent": "general", "model": "m", "quality_score": 0.5,
         "feedback": 0, "status": "complete", "selected": True,
         "tool_calls": [{"call_id": "c1", "name": "t", "input": tool_input, "output": tool_output}]},
    ]
    counts = Counter()
    (row, _), = conversation_rows("conv", messages, "train", counts)
    return row["messages"][-1]["tool_calls"][0], counts


def test_secrets_after_an_escaped_character_in_tool_calls_are_redacted():
    """JSON and repr escape a newline as `\\n`: the `n` must not shield the secret after it."""
    text = f"line\n{OPENAI}\n{CARD}\tbob@example.com"
    call, counts = _call_rows({"q": text}, {"text": text})
    for field in ("arguments", "output"):
        assert OPENAI not in call[field] and "4111" not in call[field] and "bob@" not in call[field], call[field]
    arguments = json.loads(call["arguments"])  # still JSON, with the redactions inside its strings
    assert arguments == {"q": "line\n[REDACTED_OPENAI_KEY]\n[REDACTED_CARD]\t[REDACTED_EMAIL]"}
    assert counts == Counter(openai_key=2, card=2, email=2)


def test_tool_call_arguments_given_as_json_text_are_redacted_inside_their_strings():
    call, _ = _call_rows(json.dumps({"q": f"a\n{OPENAI}"}), "")
    assert json.loads(call["arguments"]) == {"q": "a\n[REDACTED_OPENAI_KEY]"}


def _during_the_build(monkeypatch, event):
    """event(conversation id) runs once the build has read the first conversation, before it ends."""
    streamed = builds._stream

    def stream(definition):
        for index, (conversation_id, messages) in enumerate(streamed(definition)):
            yield conversation_id, messages
            if index == 0:
                event(conversation_id)

    monkeypatch.setattr(builds, "_stream", stream)


def test_a_conversation_deleted_while_its_version_builds_withdraws_it(users, consent, client_for, monkeypatch):
    owner = users["user"]
    for question in ("first question here", "second question here"):
        turn(conversation(owner), question, f"the answer to the {question}")
    deleted = []
    _during_the_build(monkeypatch, lambda pk: deleted.append(pk) or delete_conversation(
        Conversation.objects.get(pk=pk), actor=owner))
    version = build(dataset(owner.organization), actor=users["admin"])

    assert deleted and not Conversation.objects.filter(pk=deleted[0]).exists()
    assert version.state == "done" and version.withdrawn and str(deleted[0]) in version.withdrawn_reason
    assert VersionConversation.objects.filter(version=version, conversation_id=deleted[0]).exists()
    assert str(deleted[0]) in {row["conversation"] for row in lines_of(version)}  # why it is withdrawn
    assert_envelope(client_for(users["admin"]).get(reverse("training-version-download", args=[version.pk])),
                    410, "withdrawn")


def test_consent_turned_off_while_a_version_builds_fails_the_build(users, consent, monkeypatch):
    admin = users["admin"]
    for question in ("first question here", "second question here"):
        turn(conversation(admin), question, f"the answer to the {question}")
    _during_the_build(monkeypatch, lambda pk: set_consent(admin.organization, enabled=False, actor=admin))
    version = build(dataset(admin.organization), actor=admin)

    assert version.state == "failed" and "turned off" in version.message
    assert not version.file_name and not list(storage.root().iterdir())
    assert not VersionConversation.objects.filter(version=version).exists()


@pytest.mark.parametrize(("line", "problem"), [
    ('{"prompt": "a\\u0000b"}', 'Line 1: "prompt" holds a NUL character'),
    ('{"prompt": "a", "reference": "\\u0000"}', 'Line 1: "reference" holds a NUL character'),
    ('{"prompt": "a", "id": "\\u0000"}', 'Line 1: "id" holds a NUL character'),
    ('{"prompt": "\\ud800"}', 'Line 1: "prompt" holds a NUL character or a lone surrogate'),
    ("[" * 100_000 + "]" * 100_000, "Line 1: not valid JSON (nested too deeply)."),
])
def test_uploaded_lines_no_database_can_store_are_a_400_naming_the_line(users, client_for, line, problem):
    response = client_for(users["admin"]).post(SETS + "upload/", {"name": "s", "file": SimpleUploadedFile(
        "s.jsonl", f"{line}\n".encode())}, format="multipart")
    error = assert_envelope(response, 400, "invalid")
    assert error["fields"]["file"][0].startswith(problem)
    assert not EvaluationSet.objects.exists()


def test_a_set_from_a_version_needs_export_data(users, consent):
    """Its results show the version's questions and answers: without export_data, no copy of them."""
    admin = users["admin"]
    turn(conversation(admin), "what is the capital of France", "Paris")
    version = build(dataset(admin.organization), actor=admin)
    narrow = create_api_key(admin, "no export", scopes=sorted(effective_permissions(admin) - {"export_data"}))
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {narrow.secret}")
    assert_envelope(client.post(SETS, {"name": "copy", "dataset_version": version.pk}, format="json"), 403)
    assert_envelope(client.get(reverse("training-version-download", args=[version.pk])), 403)
    assert not EvaluationSet.objects.exists()


def test_a_deleted_conversation_leaves_no_copy_in_evaluation_sets_made_from_versions(users, consent, client_for):
    admin, owner = users["admin"], users["user"]
    kept, gone = conversation(owner), conversation(owner)
    turn(kept, "what is the capital of France", "Paris")
    turn(gone, "my private question about my health", "a private answer")
    version = build(dataset(admin.organization), actor=admin)
    client = client_for(admin)
    made = client.post(SETS, {"name": "from v1", "dataset_version": version.pk}, format="json")
    assert made.status_code == 201 and made.json()["items_count"] == 2
    uploaded = client.post(SETS + "upload/", {"name": "mine", "file": SimpleUploadedFile(
        "s.jsonl", jsonl({"prompt": "my private question about my health"}).encode())}, format="multipart")
    assert uploaded.status_code == 201

    client_for(owner).delete(reverse("conversation-detail", args=[gone.pk]))
    evaluation_set = EvaluationSet.objects.get(pk=made.json()["id"])
    assert [item.prompt for item in evaluation_set.items.all()] == ["what is the capital of France"]
    assert (evaluation_set.items_count, evaluation_set.references_count) == (1, 1)
    assert EvaluationSet.objects.get(pk=uploaded.json()["id"]).items.count() == 1  # an upload is its maker's


def test_the_results_of_an_evaluation_of_a_version_need_export_data(users, consent, client_for,
                                                                    django_capture_on_commit_callbacks):
    # Control: EvaluationViewSet.results asks export_data for a set made from a dataset version: its
    # items are the version's questions and answers, a download by another name.
    admin = users["admin"]
    turn(conversation(admin), "what is the capital of France", "Paris")
    version = build(dataset(admin.organization), actor=admin)
    client = client_for(admin)
    made = client.post(SETS, {"name": "from v1", "dataset_version": version.pk}, format="json").json()
    with django_capture_on_commit_callbacks(execute=True):  # the run is queued on commit
        started = client.post(EVALUATIONS, {"evaluation_set": made["id"], "targets": ["relay-general"]},
                              format="json")
    assert started.status_code == 202, started.content
    evaluation = f"{EVALUATIONS}{started.json()['id']}/"
    assert "France" in json.dumps(client.get(evaluation + "results/").json())
    narrow = create_api_key(admin, "no export", scopes=sorted(effective_permissions(admin) - {"export_data"}))
    keyed = APIClient()
    keyed.credentials(HTTP_AUTHORIZATION=f"Bearer {narrow.secret}")
    assert "France" not in json.dumps(assert_envelope(keyed.get(evaluation + "results/"), 403))
    assert keyed.get(evaluation + "comparison/").status_code == 200  # aggregates only


SECRET = "my private question about my divorce lawyer"


def _evaluated_copy(users, client_for):
    """The owner's conversation, built into a version, made into a set, evaluated by the admin: the
    owner's question asked again in the admin's run conversation."""
    admin, owner = users["admin"], users["user"]
    source = conversation(owner)
    turn(source, SECRET, "a private answer")
    version = build(dataset(admin.organization), actor=admin)
    made = client_for(admin).post(SETS, {"name": "from v1", "dataset_version": version.pk}, format="json")
    assert made.status_code == 201, made.content
    evaluation = start_evaluation(EvaluationSet.objects.get(pk=made.json()["id"]), actor=admin,
                                  targets=["fake-a"], enqueue=False)
    run = run_evaluation(evaluation.pk).results.get().conversation_id
    assert Message.objects.filter(conversation_id=run, content=SECRET).exists()  # the copy the test is about
    return source, run


@pytest.mark.parametrize("how", ["deleted", "excluded"])
def test_a_deleted_or_excluded_conversation_leaves_no_evaluation_run_asking_it(two_models, users, consent,  # noqa: F811
                                                                               client_for, how):
    # Control: training.actions.withdrawal (the conversation's pre_delete, and exclude_conversation
    # for its owner's exclusion) deletes the runs made of the items copied from it, each audited.
    owner = client_for(users["user"])
    source, run = _evaluated_copy(users, client_for)
    if how == "deleted":
        assert owner.delete(reverse("conversation-detail", args=[source.pk])).status_code == 204
    else:
        assert owner.post(reverse("training-exclusion", args=[source.pk])).json()["excluded"] is True

    assert not Conversation.objects.filter(pk=run).exists()
    assert not Message.objects.filter(content__contains="divorce").exclude(conversation=source).exists()
    deleted = AuditEvent.objects.get(action="conversation.deleted", resource=f"conversation:{run}")
    assert deleted.actor_id == users["user"].pk  # the owner's act, in the owner's name
    rebuilt = build(dataset(users["admin"].organization, name="again", include_evaluation=True))
    assert rebuilt.state == "done" and "divorce" not in json.dumps(lines_of(rebuilt))


def test_runs_of_sets_made_from_versions_never_return_in_builds(two_models, users, consent, client_for):  # noqa: F811
    # Control: training.services.selected_answers lets back in, with include_evaluation, only runs
    # of uploaded sets; a run of a version's copy is marked evaluation_copy when it opens.
    admin = users["admin"]
    source, run = _evaluated_copy(users, client_for)
    assert ConversationExclusion.objects.get(conversation_id=run).reason == "evaluation_copy"
    uploaded = start_evaluation(_set(users, {"prompt": "What is 6 times 7?"}), actor=admin, targets=["fake-a"],
                                enqueue=False)
    mine = run_evaluation(uploaded.pk).results.get().conversation_id

    rows = lines_of(build(dataset(admin.organization, name="with runs", include_evaluation=True)))
    assert {row["conversation"] for row in rows} >= {str(mine)}
    assert str(run) not in {row["conversation"] for row in rows}
    assert [row["conversation"] for row in rows if SECRET in json.dumps(row)] == [str(source.pk)]  # once, its own


def _revoke(users, key):
    revoke_api_key(key, actor=users["admin"])


def _revoke_parent(users, key):
    # Revoking a key revokes its children too; a parent revoked alone (a row changed by hand) must bind anyway.
    APIKey.objects.filter(pk=key.parent_id).update(revoked_at=timezone.now())


def _deactivate(users, key):
    User.objects.filter(pk=key.owner_id).update(is_active=False)  # as another process would


def _demote(users, key):
    users["admin"].groups.set([Group.objects.get(name="user")])  # no manage_training any more


def _move_the_addresses(users, key):
    # The key it was started through may now be used from elsewhere only; the worker has no client
    # address, so the one that started the evaluation is what the ranges must still admit.
    APIKey.objects.filter(pk=key.parent_id).update(allowed_ips=["10.0.0.0/8"])


@pytest.mark.parametrize(("change", "reason"), [(_revoke, "its key was revoked"),
                                                (_revoke_parent, "revoked with the key it was started through"),
                                                (_deactivate, "was deactivated"),
                                                (_demote, "no longer holds manage_training"),
                                                (_move_the_addresses, "no longer be used from the address")])
def test_an_evaluation_stops_when_its_key_or_starter_loses_the_right(two_models, users, change, reason):  # noqa: F811
    # Control: training.actions.evaluations._refusal reads the key and its owner again before each run.
    admin = users["admin"]
    evaluation = start_evaluation(_set(users, *[{"prompt": f"What is {i} times 7?"} for i in range(4)]),
                                  actor=admin, targets=["fake-a"], enqueue=False, client_ip="127.0.0.1",
                                  via_key=create_api_key(admin, "started through", allowed_ips=["127.0.0.0/8"]).key)

    def after_the_first(progress):
        if progress.processed == 1:
            change(users, APIKey.objects.get(pk=progress.api_key_id))

    ended = run_evaluation(evaluation.pk, on_progress=after_the_first)
    assert list(ended.results.values_list("status", flat=True)) == ["complete"]
    assert len(two_models["fake-a"].requests) == 1
    assert ended.state == "failed" and reason in ended.message and ended.message.startswith("Stopped after 1 of 4")
    finished = AuditEvent.objects.get(action="evaluation.finished", resource=f"evaluation:{ended.pk}")
    assert finished.status == "error" and reason in finished.metadata["refused"]
    assert APIKey.objects.get(pk=ended.api_key_id).revoked_at is not None
