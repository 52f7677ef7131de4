"""The document page a citation chip opens: the text by parts (#chunk-N), behind the scoping gate."""

import pytest
from django.urls import reverse

from agents.actions.documents import share_document, upload_document
from audit import actions
from audit.models import AuditEvent

pytestmark = pytest.mark.django_db
TEXT = b"# Plans\n\n| Plan | Price |\n|---|---|\n| Basic | $10 |\n\nHeron ships in April & <soon>."


@pytest.fixture
def document(users):
    return upload_document(users["user"], name="plans.md", data=TEXT, content_type="text/markdown")


def test_the_owner_reads_the_text_by_parts_with_anchors(client, users, document):
    client.force_login(users["user"])
    response = client.get(reverse("document", args=[document.pk]))
    page = response.content.decode()
    assert response.status_code == 200
    assert '<h1 class="document-title">Plans</h1>' in page
    assert 'id="chunk-0"' in page and "| Basic | $10 |" in page  # the stored text, unchanged
    assert "&amp; &lt;soon&gt;" in page  # escaped, never markup


def test_a_document_outside_the_callers_scope_is_a_404_recorded_as_hidden(client, users, other_users, document):
    url = reverse("document", args=[document.pk])
    for outsider in (other_users["admin"], other_users["user"], users["viewer"]):
        client.force_login(outsider)
        before = AuditEvent.objects.filter(action=actions.HIDDEN_OBJECT_DENIED).count()
        assert client.get(url).status_code == 404
        assert AuditEvent.objects.filter(action=actions.HIDDEN_OBJECT_DENIED).count() == before + 1
    client.force_login(users["user"])
    assert client.get(reverse("document", args=[999999])).status_code == 404


def test_sharing_opens_it_and_an_organization_admin_reads_it(client, users, document):
    share_document(users["user"], document, user_ids=[users["viewer"].pk])
    client.force_login(users["viewer"])
    assert client.get(reverse("document", args=[document.pk])).status_code == 200
    client.force_login(users["admin"])  # an organization admin reads their organization's documents
    assert client.get(reverse("document", args=[document.pk])).status_code == 200


def test_anonymous_visitors_are_sent_to_sign_in(client, document):
    response = client.get(reverse("document", args=[document.pk]))
    assert response.status_code == 302 and response["Location"].startswith("/login/")
