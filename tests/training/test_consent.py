"""Consent first: off by default, an admin's switch, a user's exclusion, deletion withdraws versions."""

import pytest
from django.contrib.auth.models import Group, Permission
from django.core.management import CommandError, call_command
from django.db import transaction
from django.db.models.signals import pre_delete
from django.test import Client
from django.urls import reverse

from accounts.actions.users import create_user
from accounts.models import User
from agents.actions.conversations import delete_conversation
from agents.models import Conversation, Message
from audit import actions
from audit.models import AuditEvent
from tests.conftest import assert_envelope
from tests.training.conftest import build, conversation, dataset, lines_of, turn
from training.models import DatasetVersion, VersionConversation
from training.models_evaluation import EvaluationSet

SETS = "/api/v1/training/evaluation-sets/"

pytestmark = pytest.mark.django_db


@pytest.fixture
def trainer(org):
    """Holds manage_training (and export_data) without being an organization admin."""
    group = Group.objects.create(name="trainer")
    group.permissions.set(Permission.objects.filter(codename__in=["manage_training", "export_data"]))
    return create_user("trainer", organization=org, role="trainer", email="t@example.com", password="x" * 20)


def test_consent_is_off_by_default_and_a_build_is_refused(users, client_for):
    admin = client_for(users["admin"])
    assert admin.get(reverse("training-consent")).json()["enabled"] is False
    ds = admin.post(reverse("training-dataset-list"), {"name": "all"}, format="json").json()
    error = assert_envelope(admin.post(reverse("training-dataset-build", args=[ds["id"]])), 409,
                            "training_consent_required")
    assert "admin" in error["message"]
    assert not DatasetVersion.objects.exists()


def test_an_organization_admin_turns_it_on_audited(users, client_for, django_capture_on_commit_callbacks):
    admin = client_for(users["admin"])
    conv = conversation(users["user"])
    turn(conv, "What is 2+2?", "4")
    response = admin.put(reverse("training-consent"), {"enabled": True}, format="json")
    assert response.status_code == 200 and response.json()["enabled"] is True
    event = AuditEvent.objects.get(action=actions.TRAINING_CONSENT_CHANGED)
    assert event.metadata == {"enabled": True, "previous": False} and event.actor_id == users["admin"].pk
    ds = admin.post(reverse("training-dataset-list"), {"name": "all"}, format="json").json()
    with django_capture_on_commit_callbacks(execute=True):
        response = admin.post(reverse("training-dataset-build", args=[ds["id"]]))
    assert response.status_code == 202
    version = admin.get(reverse("training-version-detail", args=[response.json()["id"]])).json()
    assert (version["state"], version["rows"], version["progress"]) == ("done", 1, 1.0)


def test_only_an_admin_changes_consent(users, trainer, client_for):
    client = client_for(trainer)
    assert client.get(reverse("training-consent")).status_code == 200  # manage_training reads it
    assert_envelope(client.put(reverse("training-consent"), {"enabled": True}, format="json"), 403,
                    "permission_denied")
    assert not AuditEvent.objects.filter(action=actions.TRAINING_CONSENT_CHANGED).exists()


def test_bad_consent_input_is_a_400(users, client_for):
    admin = client_for(users["admin"])
    response = admin.put(reverse("training-consent"), {"enabled": "maybe"}, format="json")
    assert set(assert_envelope(response, 400)["fields"]) == {"enabled"}
    response = admin.put(reverse("training-consent"), {"enabled": True, "organization": 2}, format="json")
    assert set(assert_envelope(response, 400)["fields"]) == {"organization"}


def test_a_user_excludes_their_conversation(users, consent, client_for):
    kept, excluded = conversation(users["user"]), conversation(users["user"])
    turn(kept, "Keep me", "kept")
    turn(excluded, "Leave me out", "excluded")
    client = client_for(users["user"])
    response = client.post(reverse("training-exclusion", args=[excluded.pk]))
    assert response.json() == {"conversation": str(excluded.pk), "excluded": True, "reason": "user"}
    assert AuditEvent.objects.filter(action=actions.TRAINING_CONVERSATION_EXCLUDED).count() == 1
    version = build(dataset(users["admin"].organization))
    assert [row["conversation"] for row in lines_of(version)] == [str(kept.pk)]
    # Someone else's conversation: 404, as if it did not exist.
    assert_envelope(client_for(users["viewer"]).post(reverse("training-exclusion", args=[kept.pk])), 404)
    # Lifting the exclusion lets it into the next build.
    assert client.delete(reverse("training-exclusion", args=[excluded.pk])).json()["excluded"] is False
    assert len(lines_of(build(dataset(users["admin"].organization)))) == 2


def _two_versions(users):
    first, second = conversation(users["user"]), conversation(users["user"])
    turn(first, "First question", "first answer")
    turn(second, "Second question", "second answer")
    org = users["admin"].organization
    both = build(dataset(org, name="both"))
    Conversation.objects.filter(pk=second.pk).update(user=users["admin"])
    only_second = build(dataset(org, name="second", users=[users["admin"].pk]))
    return first, second, both, only_second


def test_deleting_a_conversation_withdraws_exactly_the_versions_holding_it(users, consent, client_for):
    first, second, both, only_second = _two_versions(users)
    assert set(VersionConversation.objects.filter(version=both).values_list("conversation_id", flat=True)) == {
        first.pk, second.pk}
    owner = client_for(users["user"])
    assert owner.delete(reverse("conversation-detail", args=[first.pk])).status_code == 204
    both.refresh_from_db(), only_second.refresh_from_db()
    assert both.withdrawn and str(first.pk) in both.withdrawn_reason
    assert not only_second.withdrawn
    admin = client_for(users["admin"])
    error = assert_envelope(admin.get(reverse("training-version-download", args=[both.pk])), 410, "withdrawn")
    assert "withdrawn" in error["message"]
    assert admin.get(reverse("training-version-detail", args=[both.pk])).json()["download_formats"] == []
    assert admin.get(reverse("training-version-download", args=[only_second.pk])).status_code == 200
    # Excluded from every future build: its rows are gone.
    rebuilt = build(dataset(users["admin"].organization, name="again"))
    assert str(first.pk) not in {row["conversation"] for row in lines_of(rebuilt)}
    assert not AuditEvent.objects.filter(action=actions.DATA_EXPORTED, resource=f"dataset_version:{both.pk}")


def test_a_message_deleted_in_the_admin_withdraws_the_versions_holding_its_conversation(users, consent,
                                                                                      client_for):
    # Control: training's receiver of Message's pre_delete (training.actions.withdrawal.withdraw_deleted_message).
    first, _, both, only_second = _two_versions(users)
    admin = client_for(users["admin"])
    made = admin.post(SETS, {"name": "from both", "dataset_version": both.pk}, format="json").json()
    assert made["items_count"] == 2
    root = User.objects.create_superuser("root", "root@example.com", "correct horse battery staple")
    site = Client()
    site.force_login(root)
    question = Message.objects.get(conversation=first, role="user")
    response = site.post(reverse("admin:agents_message_delete", args=[question.pk]), {"post": "yes"})
    assert response.status_code == 302 and not Message.objects.filter(pk=question.pk).exists()
    assert Conversation.objects.filter(pk=first.pk).exists()  # only the message went

    both.refresh_from_db(), only_second.refresh_from_db()
    assert both.withdrawn and str(first.pk) in both.withdrawn_reason and not only_second.withdrawn
    assert_envelope(admin.get(reverse("training-version-download", args=[both.pk])), 410, "withdrawn")
    # The set made from it no longer holds the question, nor the answer it was copied with.
    assert [item.prompt for item in EvaluationSet.objects.get(pk=made["id"]).items.all()] == ["Second question"]


def test_turning_consent_off_closes_built_versions_until_it_is_on_again(users, consent, client_for):
    # Control: training.services.downloadable refuses while the organization's consent is off (409, as a build).
    turn(conversation(users["user"]), "what is the capital of France", "Paris")
    version = build(dataset(users["admin"].organization))
    admin = client_for(users["admin"])
    download = reverse("training-version-download", args=[version.pk])
    assert admin.put(reverse("training-consent"), {"enabled": False}, format="json").json()["enabled"] is False

    assert_envelope(admin.get(download), 409, "training_consent_required")
    detail = reverse("training-version-detail", args=[version.pk])
    assert admin.get(detail).json()["download_formats"] == []  # the console offers no link that would 409
    assert admin.get(reverse("training-version-list")).json()["results"][0]["download_formats"] == []
    assert_envelope(admin.post(SETS, {"name": "copy", "dataset_version": version.pk}, format="json"), 409,
                    "training_consent_required")
    with pytest.raises(CommandError, match="turned off training"):
        call_command("export_dataset", str(version.pk))
    assert not EvaluationSet.objects.exists()
    assert not AuditEvent.objects.filter(action=actions.DATA_EXPORTED).exists()
    version.refresh_from_db()
    assert not version.withdrawn  # closed, not withdrawn: consent back on opens it again

    assert admin.put(reverse("training-consent"), {"enabled": True}, format="json").json()["enabled"] is True
    response = admin.get(download)
    assert response.status_code == 200 and b"France" in b"".join(response.streaming_content)
    assert admin.get(detail).json()["download_formats"] == ["chat", "preference", "reward"]
    assert admin.post(SETS, {"name": "copy", "dataset_version": version.pk}, format="json").status_code == 201


def test_the_withdrawal_is_training_s_hook_on_the_deletion(users, consent):
    """agents knows nothing of training: without the receiver training registers, nothing is withdrawn."""
    first, _, both, _ = _two_versions(users)
    assert pre_delete.disconnect(sender=Conversation, dispatch_uid="training-withdraw")
    try:
        delete_conversation(Conversation.objects.get(pk=first.pk), actor=users["user"])
    finally:
        from training.actions.withdrawal import withdraw_deleted_conversation

        pre_delete.connect(withdraw_deleted_conversation, sender=Conversation, dispatch_uid="training-withdraw")
    both.refresh_from_db()
    assert not both.withdrawn


def test_the_withdrawal_is_in_the_deletion_s_transaction(users, consent):
    first, _, both, _ = _two_versions(users)
    with pytest.raises(RuntimeError), transaction.atomic():
        delete_conversation(Conversation.objects.get(pk=first.pk), actor=users["user"])
        raise RuntimeError("the deletion rolls back")
    both.refresh_from_db()
    assert not both.withdrawn and Conversation.objects.filter(pk=first.pk).exists()
    # A deletion through the admin's path (a queryset delete) withdraws too.
    Conversation.objects.filter(pk=first.pk).delete()
    both.refresh_from_db()
    assert both.withdrawn
