"""Images in the chat's message box in Chromium: drag and drop, paste, the preview chip, refusals,
and the vision agent chosen for an agent that cannot see (the Attach button: test_chat_vision.py).
"""

import base64

import pytest

from agents.models import Message
from tests.browser.test_chat_vision import two_colour_png
from tests.browser.test_keyboard_chat import intercept_file_choosers

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

# A File built in the page from base64 bytes, carried by a DataTransfer as a drop or a paste carries it.
MAKE_TRANSFER = """([name, type, b64]) => {
  const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
  const transfer = new DataTransfer();
  transfer.items.add(new File([bytes], name, {type}));
  return transfer;
}"""
DRAG = """([transfer, type]) => document.getElementById('messages').dispatchEvent(
  new DragEvent(type, {dataTransfer: transfer, bubbles: true, cancelable: true}))"""
PASTE = """(transfer) => document.getElementById('prompt').dispatchEvent(
  new ClipboardEvent('paste', {clipboardData: transfer, bubbles: true, cancelable: true}))"""


def open_chat(page):
    page.goto("/chat/")
    page.wait_for_selector('#connection[data-state="open"]')


def transfer(page, name: str, data: bytes, mime: str = "image/png"):
    return page.evaluate_handle(MAKE_TRANSFER, [name, mime, base64.b64encode(data).decode()])


def watch_uploads(page) -> list:
    uploads = []
    page.on("request", lambda r: uploads.append(r) if r.url.endswith("/api/v1/vision/analyze") else None)
    return uploads


def wait_for_answer(page):
    page.wait_for_selector('#messages .msg.assistant:last-child:not([data-state="streaming"])', timeout=60_000)
    return page.locator("#messages .msg.assistant").last


def test_dropping_an_image_on_the_chat_attaches_it_and_general_hands_it_to_vision(new_page, users):
    page = new_page(users["user"])
    open_chat(page)
    page.get_by_label("Agent").select_option("general")
    dropped = transfer(page, "flag.png", two_colour_png())
    hint = page.get_by_text("Drop the image to attach it")
    assert hint.is_hidden()
    page.evaluate(DRAG, [dropped, "dragenter"])
    page.evaluate(DRAG, [dropped, "dragover"])
    assert hint.is_visible()  # the drop target says what dropping does
    page.evaluate(DRAG, [dropped, "drop"])
    assert hint.is_hidden()

    chip = page.locator(".attach-chip")
    assert chip.locator(".attach-name").inner_text() == "flag.png"
    assert chip.locator(".attach-size").inner_text().endswith(" B")  # a few hundred bytes
    assert chip.locator("img.attach-thumb").evaluate("img => img.complete && img.naturalWidth") == 120
    page.get_by_role("textbox", name="Message").fill("What colour is it?")
    page.get_by_role("button", name="Send").click()

    answer = wait_for_answer(page)
    assert chip.count() == 0  # sent: the box is empty again
    assert answer.get_attribute("data-state") == "complete"
    assert "blue" in answer.locator(".content").inner_text()
    assert page.locator("#messages .msg.user .msg-note").inner_text() == "Sent to Vision — General can't read images"
    stored = Message.objects.filter(role="assistant").latest("created_at")
    assert stored.agent == "vision" and "120 × 80" in stored.content
    assert page.locator("#conversation-list .conversation").first.inner_text().startswith("What colour is it?")


def test_a_pasted_image_is_sent_once_however_often_enter_is_pressed(new_page, users):
    page = new_page(users["user"])
    open_chat(page)
    uploads = watch_uploads(page)
    page.get_by_label("Agent").select_option("vision")
    prompt = page.get_by_role("textbox", name="Message")
    prompt.focus()
    page.evaluate(PASTE, transfer(page, "image.png", two_colour_png()))
    assert page.locator(".attach-chip .attach-name").inner_text() == "image.png"
    assert prompt.input_value() == ""  # the image was not pasted as text
    prompt.press("Enter")  # an image alone is a question
    prompt.press("Enter")
    answer = wait_for_answer(page)
    assert "120 × 80" in answer.locator(".content").inner_text()
    assert len(uploads) == 1
    assert Message.objects.filter(role="user").count() == 1
    assert page.locator("#messages .msg.user .msg-note").count() == 0


def test_the_chip_can_be_removed_before_sending(new_page, users):
    page = new_page(users["user"])
    open_chat(page)
    page.get_by_role("textbox", name="Message").focus()
    page.evaluate(PASTE, transfer(page, "flag.png", two_colour_png()))
    page.get_by_role("button", name="Remove image").click()
    assert page.locator(".attach-chip").count() == 0
    assert page.evaluate("document.activeElement.getAttribute('aria-label')") == "Attach image"


def test_files_that_are_not_images_or_too_big_are_refused_before_upload(new_page, users, settings):
    settings.RELAY_MAX_UPLOAD_BYTES = 1000
    page = new_page(users["user"])
    intercept_file_choosers(page)
    open_chat(page)
    uploads = watch_uploads(page)
    message = page.get_by_role("alert").filter(has_text="notes.txt")
    with page.expect_file_chooser() as chooser:
        page.get_by_role("button", name="Attach image").click()
    chooser.value.set_files(files=[{"name": "notes.txt", "mimeType": "text/plain", "buffer": b"not a picture"}])
    assert message.inner_text() == (
        "notes.txt is not an image Relay can read. Attach a PNG, JPEG, GIF, WebP, BMP or TIFF file."
    )
    big = bytes(two_colour_png()) + bytes(2000)  # over the page's limit of 1000 bytes
    page.evaluate(DRAG, [transfer(page, "huge.png", big), "drop"])
    assert page.get_by_role("alert").filter(has_text="huge.png").inner_text() == (
        f"huge.png is {len(big) / 1024:.1f} KB; images up to 1000 B can be sent."
    )
    assert page.locator(".attach-chip").count() == 0
    page.get_by_role("button", name="Send").click()  # nothing attached, nothing typed: nothing is sent
    assert page.locator("#messages .msg").count() == 0
    assert uploads == [] and not Message.objects.exists()


def test_without_the_vision_permission_there_is_nothing_to_attach(new_page, users):
    page = new_page(users["viewer"])
    open_chat(page)
    assert page.get_by_role("button", name="Attach image").count() == 0
    page.evaluate(DRAG, [transfer(page, "flag.png", two_colour_png()), "drop"])
    assert page.locator(".attach-chip").count() == 0
