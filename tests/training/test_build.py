"""Building a version: selection, duplicates, the split, progress, an empty selection."""

import datetime as dt
import random
import uuid

import pytest
from django.urls import reverse

from billing.models import ModelPrice, UsageRecord
from tests.training.conftest import T0, answer_to, build, conversation, dataset, lines_of, turn
from training import services
from training.actions import builds
from training.actions.consent import exclude_conversation
from training.models import ConversationExclusion, DatasetVersion

pytestmark = pytest.mark.django_db

WORDS = [f"word{i}" for i in range(3000)]


def long_text(seed: int, length: int = 300) -> str:
    chooser = random.Random(seed)
    return " ".join(chooser.choice(WORDS) for _ in range(length))


def test_near_duplicates_are_removed_and_different_texts_kept(users, consent):
    original = long_text(1)
    paraphrase = original.split()
    paraphrase[150] = "changed"  # one word: Jaccard of the 5-gram shingles ~0.97
    for question, answer in [("Tell me", original), ("Tell me", " ".join(paraphrase)), ("Tell me", long_text(2)),
                             ("Tell me", original.upper())]:
        turn(conversation(users["user"]), question, answer)
    version = build(dataset(users["admin"].organization))
    assert (version.rows, version.near_duplicates, version.exact_duplicates) == (2, 1, 1)
    answers = {row["messages"][-1]["content"] for row in lines_of(version)}
    assert long_text(2) in answers and len(answers & {original, " ".join(paraphrase), original.upper()}) == 1


def test_a_text_changed_in_many_places_is_kept(users, consent):
    original = long_text(3)
    changed = original.split()
    for index in range(0, 300, 15):  # 20 words: well under 0.9
        changed[index] = "other"
    for answer in (original, " ".join(changed)):
        turn(conversation(users["user"]), "Tell me", answer)
    assert build(dataset(users["admin"].organization)).rows == 2


def test_the_split_is_by_conversation_and_deterministic(users, consent):
    ids = [uuid.UUID(int=n * 7919 + 1) for n in range(200)]
    for n, pk in enumerate(ids):
        conv = conversation(users["user"], pk=pk)
        question, _ = turn(conv, f"Question {n}", f"Answer number {n}")
        answer_to(question, f"Another answer {n}")  # two rows of one conversation
    org = users["admin"].organization
    first, second = build(dataset(org)), build(dataset(org, name="again"))
    rows = lines_of(first)
    splits = {}
    for row in rows:
        assert splits.setdefault(row["conversation"], row["split"]) == row["split"]  # never straddles
        assert row["split"] == services.split_of(row["conversation"], 10)
    validation = sum(1 for split in splits.values() if split == "validation")
    assert 8 <= validation <= 35  # ~10% of 200
    assert (first.validation_rows, first.train_rows) == (2 * validation, 400 - 2 * validation)
    assert rows == lines_of(second) and first.content_sha256 == second.content_sha256
    assert [(r["conversation"], r["id"]) for r in rows] == sorted((r["conversation"], r["id"]) for r in rows)
    none = build(dataset(org, name="no validation", validation_percent=0))
    assert none.validation_rows == 0


def test_progress_is_recorded_on_the_version(users, consent, monkeypatch, client_for):
    for n in range(30):
        turn(conversation(users["user"]), f"Question {n}", f"Answer {n} " + long_text(n, 20))
    monkeypatch.setattr(builds, "PROGRESS_SECONDS", 0)
    version = builds.request_build(dataset(users["admin"].organization), actor=users["admin"], enqueue=False)
    seen = []
    api = client_for(users["admin"])

    def observe(running):
        body = api.get(reverse("training-version-detail", args=[running.pk])).json()
        seen.append((body["state"], body["processed"], body["total"]))

    builds.run_build(version.pk, on_progress=observe)
    assert seen[0][0] == "running" and all(total == 30 for _, _, total in seen)
    assert [processed for _, processed, _ in seen] == sorted({p for _, p, _ in seen}) and seen[-1][1] == 30
    body = api.get(reverse("training-version-detail", args=[version.pk])).json()
    assert (body["state"], body["processed"], body["total"], body["progress"]) == ("done", 30, 30, 1.0)
    assert api.get(reverse("training-version-list") + f"?dataset={version.dataset_id}").json()["results"][0][
        "id"] == version.pk


def test_an_empty_selection_is_a_version_with_no_rows_and_a_message(users, consent, client_for,
                                                                   django_capture_on_commit_callbacks):
    turn(conversation(users["user"]), "Q", "A", model="model-a")
    api = client_for(users["admin"])
    ds = api.post(reverse("training-dataset-list"), {"name": "none", "models": ["no-such-model"]}, format="json")
    assert ds.status_code == 201, ds.content
    with django_capture_on_commit_callbacks(execute=True):
        version = api.post(reverse("training-dataset-build", args=[ds.json()["id"]])).json()
    version = api.get(reverse("training-version-detail", args=[version["id"]])).json()
    assert (version["state"], version["rows"], version["total"]) == ("done", 0, 0)
    assert version["message"] == services.EMPTY_MESSAGE
    download = api.get(reverse("training-version-download", args=[version["id"]]))
    assert download.status_code == 200 and b"".join(download.streaming_content) == b""


def test_filters_and_what_is_left_out_unless_asked(users, other_users, consent):
    org = users["admin"].organization
    user, admin = users["user"], users["admin"]
    good = turn(conversation(user, agent="math"), "Q good", "A good", quality_score=0.9, feedback=1,
                model="model-a")[1]
    low = turn(conversation(user), "Q low", "A low", quality_score=0.2, feedback=-1, model="model-b",
               at=T0 + dt.timedelta(days=3))[1]
    failed = turn(conversation(user), "Q failed", "A failed", status="error")[1]
    stopped = turn(conversation(user), "Q stopped", "A stopped", status="budget_stop")[1]
    running = turn(conversation(user), "Q running", "", status="running")[1]
    cached = turn(conversation(admin), "Q cached", "A cached")[1]
    price = ModelPrice.objects.create(model="model-x", input_per_1k="0.001", output_per_1k="0.001")
    UsageRecord.objects.create(organization=org, user=admin, agent="general", model="model-x", price=price,
                               status="complete", cached=True, request_id="r-cached", message_id=cached.pk)
    evaluated = turn(conversation(admin), "Q evaluated", "A evaluated")[1]
    exclude_conversation(evaluated.conversation, actor=None, reason=ConversationExclusion.Reason.EVALUATION)
    turn(conversation(other_users["user"]), "Q elsewhere", "A elsewhere")

    def ids(**filters):
        return {row["id"] for row in lines_of(build(dataset(org, **filters)))}

    assert ids() == {str(good.pk), str(low.pk)}
    assert ids(include_failed=True, statuses=["complete", "error", "budget_stop"]) == {
        str(good.pk), str(low.pk), str(failed.pk), str(stopped.pk)}
    assert str(running.pk) not in ids(include_failed=True, statuses=["complete", "error", "interrupted"])
    assert ids(include_cached=True) == {str(good.pk), str(low.pk), str(cached.pk)}
    assert ids(include_evaluation=True) == {str(good.pk), str(low.pk), str(evaluated.pk)}
    assert ids(min_quality=0.5) == {str(good.pk)}
    assert ids(feedback="negative") == {str(low.pk)}
    assert ids(agents=["math"]) == {str(good.pk)}
    assert ids(model_names=["model-b"]) == {str(low.pk)}
    assert ids(start=T0 + dt.timedelta(days=1)) == {str(low.pk)}
    assert ids(end=T0 + dt.timedelta(days=1)) == {str(good.pk)}
    assert ids(users=[admin.pk], include_cached=True) == {str(cached.pk)}
    assert ids(teams=[user.team_id], include_cached=True) == {str(good.pk), str(low.pk), str(cached.pk)}


def test_bad_definitions_are_refused_with_the_fields(users, other_users, client_for):
    api = client_for(users["admin"])
    response = api.post(reverse("training-dataset-list"), {
        "name": "bad", "statuses": ["error"], "users": [other_users["user"].pk], "start": "2026-12-02T00:00:00Z",
        "end": "2026-12-01T00:00:00Z", "min_quality": 2, "agents": ["nobody"], "feedback": "sometimes"},
        format="json")
    assert response.status_code == 400
    fields = response.json()["error"]["fields"]
    assert {"min_quality", "agents", "feedback"} <= set(fields)
    response = api.post(reverse("training-dataset-list"), {
        "name": "bad", "statuses": ["error"], "users": [other_users["user"].pk], "start": "2026-12-02T00:00:00Z",
        "end": "2026-12-01T00:00:00Z"}, format="json")
    assert set(response.json()["error"]["fields"]) == {"statuses", "users", "end"}


def test_a_failing_build_ends_failed_and_audited(users, consent, monkeypatch):
    from audit.models import AuditEvent

    turn(conversation(users["user"]), "Q", "A")

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(builds, "_write", boom)
    version = build(dataset(users["admin"].organization))
    assert version.state == DatasetVersion.State.FAILED and version.message
    event = AuditEvent.objects.get(action="dataset.built")
    assert event.status == "error" and event.metadata["error"] == "OSError"


def test_a_version_is_built_once_however_often_the_task_runs(users, consent):
    from audit.models import AuditEvent

    turn(conversation(users["user"]), "Q", "A")
    version = build(dataset(users["admin"].organization))
    again = builds.run_build(version.pk)
    assert (again.state, again.content_sha256) == ("done", version.content_sha256)
    assert AuditEvent.objects.filter(action="dataset.built").count() == 1
