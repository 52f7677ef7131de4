"""The agents answer for real with nothing configured (the embedded engine), through the API."""

import io

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse
from PIL import Image, ImageDraw, ImageFont

from agents.models import Conversation, Message
from tests.conftest import assert_envelope

pytestmark = pytest.mark.django_db


def ask(client, agent, query, **extra):
    response = client.post(reverse("query"), {"query": query, "agent_type": agent, **extra}, format="json")
    assert response.status_code == 200, response.content
    return response.json()


def test_math_agent_integrates_and_solves(users, client_for):
    client = client_for(users["user"])
    integral = ask(client, "math", "integrate x^2")
    assert r"\frac{x^{3}}{3} + C$$" in integral["answer"] and integral["status"] == "complete"
    assert integral["tool_calls"][0]["tool"] == "calculator" and integral["tool_calls"][0]["status"] == "done"
    roots = ask(client, "math", "solve x^2-5x+6=0")
    assert "2" in roots["answer"] and "3" in roots["answer"]
    stored = Message.objects.get(pk=roots["message_id"])
    assert stored.status == "complete" and stored.quality_score == 1.0 and stored.output_tokens > 0
    assert stored.content == roots["answer"] and stored.tool_calls[0]["name"] == "calculator"
    assert roots["usage"]["output_tokens"] == stored.output_tokens and roots["usage"]["input_tokens"] > 0


@pytest.mark.parametrize("hostile", ["__import__('os').system('id')", "factorial(10**9)", "2**2**2**30"])
def test_math_agent_refuses_injection_and_hangs_clearly(users, client_for, hostile):
    answer = ask(client_for(users["user"]), "math", hostile)
    assert answer["tool_calls"][0]["status"] == "error"
    assert answer["answer"].startswith("I couldn't compute that")
    assert Message.objects.get(pk=answer["message_id"]).quality_score == 0.0


def test_code_agent_runs_python_in_the_sandbox(users, client_for):
    from tests.agents.test_sandbox import require_sandbox

    require_sandbox()
    answer = ask(client_for(users["api_user"]), "code", "print(sum(range(10)))")
    assert "45" in answer["answer"] and answer["tool_calls"][0]["status"] == "done"
    assert "45" in answer["tool_calls"][0]["output"]


def test_rag_agent_quotes_the_uploaded_document(users, client_for):
    client = client_for(users["user"])
    text = (b"# Retention policy\n\nBackups of the billing database are kept for 35 days and encrypted "
            b"with AES-256. Audit logs are retained for seven years.\n")
    upload = client.post(reverse("document-list"), {"file": SimpleUploadedFile("policy.md", text, "text/markdown")},
                         format="multipart")
    assert upload.status_code == 201, upload.content
    answer = ask(client, "rag", "How long are backups of the billing database kept?")
    assert "35 days" in answer["answer"] and "Retention policy" in answer["answer"] and "[1]" in answer["answer"]


def test_rag_agent_says_when_nothing_matches(users, client_for):
    answer = ask(client_for(users["viewer"]), "rag", "zyxwvut quizzical frobnication")
    assert "found nothing" in answer["answer"]


def test_general_agent_says_no_model_is_configured_and_uses_the_docs(users, client_for):
    answer = ask(client_for(users["viewer"]), "general", "How do I run Relay with PostgreSQL and Redis?")
    assert "No language model is configured" in answer["answer"]
    assert "DATABASE_URL" in answer["answer"] or "Redis" in answer["answer"]


def _text_image(text: str) -> bytes:
    image = Image.new("RGB", (640, 160), "white")
    ImageDraw.Draw(image).text((20, 40), text, fill="black", font=ImageFont.load_default(size=64))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def test_vision_agent_reads_text_by_ocr(users, client_for):
    from tests.agents.test_vision import require_tesseract

    require_tesseract()
    image = SimpleUploadedFile("sign.png", _text_image("RELAY 42"), "image/png")
    response = client_for(users["user"]).post(reverse("vision-analyze"),
                                              {"image": image, "question": "What does it say?"}, format="multipart")
    assert response.status_code == 200, response.content
    assert "RELAY" in response.json()["answer"] and "PNG" in response.json()["answer"]


def test_vision_refuses_non_images_and_needs_its_permission(users, client_for):
    not_image = SimpleUploadedFile("x.png", b"not an image at all", "image/png")
    error = assert_envelope(client_for(users["user"]).post(reverse("vision-analyze"), {"image": not_image},
                                                           format="multipart"), 400, "invalid")
    assert "image" in error["fields"]
    assert_envelope(client_for(users["viewer"]).post(reverse("vision-analyze"), {}, format="multipart"), 403)


@pytest.mark.parametrize(
    "body, field",
    [
        ({"query": "", "agent_type": "math"}, "query"),
        ({"query": "x" * 40_000, "agent_type": "math"}, "query"),
        ({"query": "hi", "agent_type": "skynet"}, "agent_type"),
        ({"query": 5, "agent_type": "math"}, "query"),
        ({"query": "hi", "agent_type": "math", "max_tokens": "lots"}, "max_tokens"),
        ({"query": "hi", "agent_type": "math", "model": "gpt-9"}, "model"),
        ({"query": "hi", "agent_type": "math", "conversation_id": "nope"}, "conversation_id"),
        ({"query": "hi", "agent_type": "math", "surprise": 1}, "surprise"),
    ],
)
def test_bad_queries_get_400_naming_the_field(users, client_for, body, field):
    before = Message.objects.count()
    error = assert_envelope(client_for(users["user"]).post(reverse("query"), body, format="json"), 400)
    assert field in error["fields"], error
    assert Message.objects.count() == before


def test_agent_permissions_and_key_allow_lists(users, client_for, api_client):
    assert_envelope(client_for(users["viewer"]).post(reverse("query"), {"query": "1+1", "agent_type": "math"},
                                                     format="json"), 403, "permission_denied")
    from accounts.actions.keys import create_api_key

    key = create_api_key(users["user"], "math only", allowed_agents=["math"]).secret
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    assert api_client.post(reverse("query"), {"query": "1+1", "agent_type": "math"}, format="json").status_code == 200
    assert_envelope(api_client.post(reverse("query"), {"query": "hi", "agent_type": "rag"}, format="json"), 403)
    listed = {a["name"] for a in api_client.get(reverse("agent-list")).json()}
    assert listed == {"math"}
    viewer_agents = {a["name"] for a in client_for(users["viewer"]).get(reverse("agent-list")).json()}
    assert viewer_agents == {"rag", "general"}


def test_unicode_and_control_characters(users, client_for):
    client = client_for(users["user"])
    error = assert_envelope(client.post(reverse("query"), {"query": "2\x00+2", "agent_type": "math"}, format="json"),
                            400, "invalid")
    assert "query" in error["fields"]
    answer = ask(client, "rag", "Überprüfung \x07\x1b[31m ✓ 日本語 \u202e emoji 🚀")
    assert answer["status"] == "complete"
    stored = Message.objects.filter(role="user").latest("created_at").content
    assert "\x07" not in stored and "\x1b" not in stored and "日本語" in stored and "🚀" in stored


def test_conversations_keep_history_and_are_private(users, client_for):
    client = client_for(users["user"])
    first = ask(client, "math", "expand (x+1)^2")
    ask(client, "math", "factor x^2+5x+6", conversation_id=first["conversation_id"])
    detail = client.get(reverse("conversation-detail", args=[first["conversation_id"]])).json()
    assert [m["role"] for m in detail["messages"]] == ["user", "assistant", "user", "assistant"]
    other = client_for(users["admin"])
    assert_envelope(other.get(reverse("conversation-detail", args=[first["conversation_id"]])), 404)
    assert_envelope(other.post(reverse("query"), {"query": "1+1", "agent_type": "math",
                                                  "conversation_id": first["conversation_id"]}, format="json"), 404)
    assert Conversation.objects.get(pk=first["conversation_id"]).messages.count() == 4


def test_feedback_adjusts_quality(users, client_for):
    client = client_for(users["user"])
    answer = ask(client, "math", "integrate x^2")
    url = reverse("message-feedback", args=[answer["message_id"]])
    assert client.post(url, {"rating": -1}, format="json").json()["quality_score"] == 0.75
    assert client.post(url, {"rating": 1}, format="json").json()["quality_score"] == 1.0
    assert_envelope(client.post(url, {"rating": 5}, format="json"), 400)
    assert_envelope(client_for(users["admin"]).post(url, {"rating": 1}, format="json"), 404)
