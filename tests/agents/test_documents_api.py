"""RAG documents: upload, visibility (404 for what was not shared), sharing, deletion, bad files."""

import io

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import override_settings
from django.urls import reverse
from pypdf import PdfWriter

from accounts.models import Team
from agents.models import Document
from tests.conftest import assert_envelope

pytestmark = pytest.mark.django_db


def upload(client, name, data, content_type="text/plain"):
    return client.post(reverse("document-list"), {"file": SimpleUploadedFile(name, data, content_type)},
                       format="multipart")


def ask_rag(client, query):
    return client.post(reverse("query"), {"query": query, "agent_type": "rag"}, format="json").json()["answer"]


@pytest.fixture
def secret_doc(users, client_for):
    response = upload(client_for(users["user"]), "plan.txt",
                      b"Project Nightingale launches on the ninth of March with a budget of 4.2 million.")
    assert response.status_code == 201, response.content
    assert response.json()["chunk_count"] == 1 and response.json()["kind"] == "text"
    return response.json()


def test_documents_are_invisible_to_users_they_were_not_shared_with(users, client_for, other_users, secret_doc):
    url = reverse("document-detail", args=[secret_doc["id"]])
    for outsider in (users["api_user"], users["viewer"], other_users["admin"], other_users["user"]):
        client = client_for(outsider)
        assert_envelope(client.get(url), 404, "not_found")
        assert secret_doc["id"] not in [d["id"] for d in client.get(reverse("document-list")).json()["results"]]
        assert "Nightingale" not in ask_rag(client, "When does Project Nightingale launch?")
    owner = client_for(users["user"])
    assert owner.get(url).json()["name"] == "plan.txt"
    assert "ninth of March" in ask_rag(owner, "When does Project Nightingale launch?")


def test_sharing_with_a_user_and_with_a_team(users, client_for, secret_doc):
    owner = client_for(users["user"])
    share = reverse("document-share", args=[secret_doc["id"]])
    assert owner.post(share, {"users": [users["viewer"].pk]}, format="json").status_code == 200
    assert "ninth of March" in ask_rag(client_for(users["viewer"]), "When does Project Nightingale launch?")

    sales = Team.objects.create(organization=users["user"].organization, name="Sales")
    users["api_user"].team = sales
    users["api_user"].save()
    assert owner.post(share, {"teams": [sales.pk]}, format="json").status_code == 200
    assert client_for(users["api_user"]).get(reverse("document-detail", args=[secret_doc["id"]])).status_code == 200
    # Leaving the team ends the access that came through it.
    users["api_user"].team = None
    users["api_user"].save()
    assert_envelope(client_for(users["api_user"]).get(reverse("document-detail", args=[secret_doc["id"]])), 404)


def test_only_owner_or_admin_shares_and_only_delete_documents_deletes(users, client_for, other_users, secret_doc):
    share = reverse("document-share", args=[secret_doc["id"]])
    owner = client_for(users["user"])
    owner.post(share, {"users": [users["admin"].pk]}, format="json")
    assert_envelope(owner.post(share, {"users": [other_users["user"].pk]}, format="json"), 400, "invalid")
    detail = reverse("document-detail", args=[secret_doc["id"]])
    assert_envelope(owner.delete(detail), 403, "permission_denied")  # users lack delete_documents
    assert client_for(users["admin"]).delete(detail).status_code == 204
    assert not Document.objects.filter(pk=secret_doc["id"]).exists()


def _pdf(text: str | None = None, password: str | None = None) -> bytes:
    writer = PdfWriter()
    writer.add_blank_page(width=200, height=200)
    if password:
        writer.encrypt(password)
    buffer = io.BytesIO()
    writer.write(buffer)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "name, data, content_type, message",
    [
        ("empty.txt", b"", "text/plain", "empty"),
        ("broken.pdf", b"%PDF-1.7 this is not really a pdf", "application/pdf", "PDF"),
        ("locked.pdf", _pdf(password="hunter2"), "application/pdf", "encrypted"),
        ("blank.pdf", _pdf(), "application/pdf", "text"),
        ("program.exe", bytes(range(256)) * 10, "application/octet-stream", "Unsupported"),
    ],
)
def test_unusable_files_are_refused_clearly_and_nothing_is_stored(users, client_for, name, data, content_type,
                                                                   message):
    before = Document.objects.count()
    error = assert_envelope(upload(client_for(users["user"]), name, data, content_type), 400, "invalid")
    assert message.lower() in error["message"].lower(), error
    assert Document.objects.count() == before


def test_oversized_uploads_get_413(users, client_for):
    with override_settings(RELAY_MAX_UPLOAD_BYTES=1024 * 1024):
        response = upload(client_for(users["user"]), "big.txt", b"x" * (2 * 1024 * 1024))
    assert_envelope(response, 413, "payload_too_large")


def test_upload_needs_upload_documents_and_document_names_are_not_html(users, client_for):
    assert_envelope(upload(client_for(users["viewer"]), "a.txt", b"hello"), 403, "permission_denied")
    response = upload(client_for(users["user"]), "<img src=x onerror=alert(1)>.txt", b"hello world")
    assert response.status_code == 201
    assert response["Content-Type"] == "application/json"


def test_builtin_docs_are_visible_to_everyone_but_not_deletable(users, client_for):
    builtin = Document.objects.filter(builtin=True).first()
    assert builtin is not None
    viewer = client_for(users["viewer"])
    assert viewer.get(reverse("document-detail", args=[builtin.pk])).status_code == 200
    assert_envelope(client_for(users["admin"]).delete(reverse("document-detail", args=[builtin.pk])), 403)


def test_a_superuser_member_reads_documents_of_their_own_organization_only(users, other_users, client_for):
    # Control: agents.documents.readable_documents keeps reading in the caller's organization, even
    # where the scoping gate shows a superuser every one: what is read lands in their conversations.
    from agents.documents import readable_documents, search

    theirs = upload(client_for(other_users["user"]), "globex.txt",
                    b"Globex merger codename zanzibar: the pricing floor is 42 million.").json()
    ours = upload(client_for(users["user"]), "acme.txt", b"Acme merger codename nightjar closes in May.").json()
    boss = users["admin"]
    boss.is_superuser = True
    boss.save()

    found = search(boss, "merger codename zanzibar nightjar", api_key=None)
    assert theirs["id"] not in {passage.document_id for passage in found}
    assert not any("zanzibar" in passage.text for passage in found)
    assert ours["id"] in {passage.document_id for passage in found}
    readable = set(readable_documents(boss, None).values_list("pk", flat=True))
    assert theirs["id"] not in readable and Document.objects.filter(builtin=True).first().pk in readable
    assert "zanzibar" not in ask_rag(client_for(boss), "What is the Globex merger codename zanzibar?")
    # Managing them stays the superuser's: the gate still shows every organization's documents.
    assert client_for(boss).get(reverse("document-detail", args=[theirs["id"]])).status_code == 200
