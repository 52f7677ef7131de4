"""Image analysis from the chat page in Chromium: the session's multipart upload with its CSRF token.

Every browser user got 415 here while API keys worked (relay.api.async_views built the DRF
Request without parsers, and the session's CSRF check reads the form). The page's upload path
is the message box: an attached image goes with the question to /api/v1/vision/analyze
(tests/browser/test_chat_images.py covers the other ways in: drag and drop, paste, refusals).
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
    page.on("filechooser", lambda chooser: None)  # subscribed before the click (tests/browser/test_keyboard_chat.py)
    page.goto("/chat/")
    page.wait_for_selector('#connection[data-state="open"]')
    uploads = []
    page.on("response", lambda r: uploads.append(r) if r.url.endswith("/api/v1/vision/analyze") else None)
    page.get_by_label("Agent").select_option("vision")
    with page.expect_file_chooser() as chooser:
        page.get_by_role("button", name="Attach image").click()
    chooser.value.set_files(files=[{"name": "flag.png", "mimeType": "image/png", "buffer": two_colour_png()}])
    page.get_by_role("textbox", name="Message").fill("What colour is it?")
    page.get_by_role("button", name="Send").click()

    answer = page.locator("#messages .msg.assistant").last
    page.wait_for_selector('#messages .msg.assistant:last-child:not([data-state="streaming"])', timeout=60_000)
    assert [r.status for r in uploads] == [200], [(r.status, r.text()[:200]) for r in uploads]
    assert answer.get_attribute("data-state") == "complete"
    assert answer.locator(".msg-alert").is_hidden()
    text = answer.locator(".content").inner_text()
    assert "120 × 80" in text and "blue" in text and "yellow" in text, text
    asked = page.locator("#messages .msg.user").last
    assert asked.locator(".content").inner_text() == "flag.png: What colour is it?"
    assert asked.locator("img.attach-thumb").is_visible()  # the image asked about, shown with the question
    assert asked.locator(".msg-note").count() == 0  # the vision agent was chosen: nothing to explain
    stored = Message.objects.filter(role="assistant", agent="vision").latest("created_at")
    assert "120 × 80" in stored.content and stored.status == "complete"
    # The conversation is listed, as for any answer.
    assert page.locator("#conversation-list .conversation").first.inner_text().startswith("What colour is it?")
