"""The async endpoints parse a body one way for every credential (relay.api.async_views).

A browser's session is checked for CSRF as it authenticates, and that check reads the form
fields: the DRF Request used to be built without parsers, so every session POST to an async
endpoint (the chat page's image analysis) was 415. The test client skips CSRF checks unless
asked, which is how it went unseen: these clients enforce them, as a browser's requests meet them.
"""

import io

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse
from PIL import Image
from rest_framework.test import APIClient

from tests.conftest import assert_envelope

pytestmark = pytest.mark.django_db


def png(colour="red") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), colour).save(buffer, "PNG")
    return buffer.getvalue()


def browser(user) -> tuple[APIClient, str]:
    """A client that meets CSRF checks as a browser does, signed in, with the token the chat page set."""
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(user)
    assert client.get(reverse("chat")).status_code == 200
    return client, client.cookies["csrftoken"].value


def caller(user, via: str, client_for):
    """(client, headers) for one credential; the session sends its CSRF token as console.js does."""
    if via == "session":
        client, token = browser(user)
        return client, {"HTTP_X_CSRFTOKEN": token}
    client = client_for(user, via=via)
    client.handler.enforce_csrf_checks = True  # a bearer credential must not need it anyway
    return client, {}


@pytest.mark.parametrize("via", ["session", "api_key", "jwt"])
def test_the_same_image_upload_is_answered_for_every_credential(users, client_for, via):
    client, headers = caller(users["user"], via, client_for)
    image = SimpleUploadedFile("red.png", png(), "image/png")
    response = client.post(reverse("vision-analyze"), {"image": image, "question": "What colour is it?"},
                           format="multipart", **headers)
    assert response.status_code == 200, response.content[:300]
    answer = response.json()["answer"]
    assert "64 × 48" in answer and "red" in answer, answer


@pytest.mark.parametrize("via", ["session", "api_key", "jwt"])
def test_the_same_json_query_is_answered_for_every_credential(users, client_for, via):
    client, headers = caller(users["user"], via, client_for)
    response = client.post(reverse("query"), {"query": "integrate x^2", "agent_type": "math"}, format="json",
                           **headers)
    assert response.status_code == 200, response.content[:300]
    assert r"\frac{x^{3}}{3}" in response.json()["answer"]


def test_a_session_post_without_its_csrf_token_is_still_refused(users):
    client, _ = browser(users["user"])
    image = SimpleUploadedFile("red.png", png(), "image/png")
    error = assert_envelope(client.post(reverse("vision-analyze"), {"image": image}, format="multipart"), 403)
    assert "CSRF" in error["message"], error
    assert_envelope(client.post(reverse("query"), {"query": "1+1", "agent_type": "math"}, format="json"), 403)


@pytest.mark.parametrize("via", ["session", "api_key"])
def test_each_endpoint_takes_only_its_own_media_type(users, client_for, via):
    client, headers = caller(users["user"], via, client_for)
    image = SimpleUploadedFile("red.png", png(), "image/png")
    assert_envelope(client.post(reverse("query"), {"query": "1+1", "agent_type": "math", "file": image},
                                format="multipart", **headers), 415, "unsupported_media_type")
    assert_envelope(client.post(reverse("vision-analyze"), {"question": "hi"}, format="json", **headers), 415,
                    "unsupported_media_type")
    assert_envelope(client.post(reverse("query"), b"{oops", content_type="application/json", **headers), 400,
                    "malformed_request")
