"""Image analysis from the chat page in Chromium: the session's multipart upload with its CSRF token.

Every browser user got 415 here while API keys worked (relay.api.async_views built the DRF
Request without parsers, and the session's CSRF check reads the form). The page's upload path
is the "Image analysis" form beside the conversation list.
"""

import io

import pytest
from PIL import Image, ImageDraw

from agents.models import Message

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def two_colour_png() -> bytes:
    image = Image.new("RGB", (120, 80), (0, 0, 255))
    ImageDraw.Draw(image).rectangle((0, 0, 119, 23), fill=(255, 255, 0))  # 30% yellow
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def test_a_signed_in_user_analyses_an_image_from_the_chat_page(new_page, users):
    page = new_page(users["user"])
    page.goto("/chat/")
    page.wait_for_selector('#connection[data-state="open"]')
    uploads = []
    page.on("response", lambda r: uploads.append(r) if r.url.endswith("/api/v1/vision/analyze") else None)
    page.get_by_label("Image (PNG, JPEG, GIF, WebP, BMP, TIFF)").set_input_files(
        files=[{"name": "flag.png", "mimeType": "image/png", "buffer": two_colour_png()}])
    page.get_by_label("Question (optional)").fill("What colour is it?")
    page.get_by_role("button", name="Analyze image").click()

    answer = page.locator("#messages .msg.assistant").last
    page.wait_for_selector('#messages .msg.assistant:last-child:not([data-state="streaming"])', timeout=60_000)
    assert [r.status for r in uploads] == [200], [(r.status, r.text()[:200]) for r in uploads]
    assert answer.get_attribute("data-state") == "complete"
    assert answer.locator(".msg-alert").is_hidden()
    text = answer.locator(".content").inner_text()
    assert "120 × 80" in text and "blue" in text and "yellow" in text, text
    assert page.locator("#messages .msg.user").last.inner_text().endswith("flag.png: What colour is it?")
    stored = Message.objects.filter(role="assistant", agent="vision").latest("created_at")
    assert "120 × 80" in stored.content and stored.status == "complete"
    # The conversation is listed, as for any answer.
    assert page.locator("#conversation-list .conversation").first.inner_text().startswith("What colour is it?")
