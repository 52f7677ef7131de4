"""The chat with the keyboard alone, in Chromium: no clicks from the page's start to the last answer.

Focus the message box by the skip links, send with Enter (Shift+Enter is a new line), stop a streaming
answer with Escape and with the Stop button, attach an image (Enter on the button opens the file
chooser; the chip's remove button works too), and move between conversations with the arrow keys.
"""

import pytest

from agents.models import Conversation, Message
from tests.browser.test_chat_vision import two_colour_png

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]
LONG_QUESTION = "Explain how Relay budgets, API keys, streaming and the audit trail work together."
FLAG = [{"name": "flag.png", "mimeType": "image/png", "buffer": two_colour_png()}]


def focused(page) -> str:
    """The focused element by its label or text (the message box, which has neither here, by its id)."""
    return page.evaluate("""() => { const e = document.activeElement;
      return e.getAttribute('aria-label') || e.textContent.trim() || e.id; }""")


def intercept_file_choosers(page):
    """Playwright subscribes to file choosers without waiting: a key pressed right after
    expect_file_chooser() can open the real, headless dialog first. Subscribe once, early."""
    page.on("filechooser", lambda chooser: None)


def press(page, *keys):
    for key in keys:
        page.keyboard.press(key)


def streaming_some_text(page):
    page.wait_for_function(
        """() => { const a = document.querySelector('#messages .msg.assistant:last-child');
      return a && a.dataset.state === 'streaming' && a.querySelector('.content').textContent.length > 10; }""",
        timeout=60_000,
    )


def last_answer_state(page, state: str):
    page.wait_for_selector(f'#messages .msg.assistant:last-child[data-state="{state}"]', timeout=60_000)


def seed(user, title: str, question: str, answer: str):
    conversation = Conversation.objects.create(user=user, organization=user.organization, agent="general", title=title)
    asked = Message.objects.create(conversation=conversation, role="user", content=question)
    Message.objects.create(
        conversation=conversation, role="assistant", parent=asked, content=answer, agent="general", model="local-mini"
    )
    return conversation


def test_chat_with_the_keyboard_alone(new_page, users, settings):
    settings.RELAY_LOCAL_TOKEN_DELAY_MS = 60  # long answers: a Stop lands well before their end
    page = new_page(users["user"])
    intercept_file_choosers(page)
    page.goto("/chat/")
    page.wait_for_selector('#connection[data-state="open"]')

    # From the page's start: "Skip to content", then the chat's own "Skip to the message box".
    press(page, "Tab")
    assert focused(page) == "Skip to content"
    press(page, "Enter", "Tab")
    assert focused(page) == "Skip to the message box"
    press(page, "Enter")
    assert focused(page) == "prompt"

    # Pick General (type-ahead on the agent list), back to the message box, write two lines, send.
    press(page, "Shift+Tab", "g", "Tab")
    assert page.locator("#agent").input_value() == "general" and focused(page) == "prompt"
    page.keyboard.type("Explain how Relay budgets,")
    press(page, "Shift+Enter")
    page.keyboard.type("API keys, streaming and the audit trail work together.")
    assert page.locator("#prompt").input_value().count("\n") == 1
    press(page, "Enter")
    streaming_some_text(page)
    press(page, "Escape")  # stops the streaming answer
    last_answer_state(page, "cancelled")
    assert focused(page) == "prompt"
    assert Message.objects.filter(role="assistant").latest("created_at").status == "cancelled"

    # Again, stopped by the Stop button this time: Tab passes Attach and the disabled Send.
    page.keyboard.type(LONG_QUESTION)
    press(page, "Enter")
    last_answer_state(page, "streaming")
    # The Stop pressed a moment ago (Escape) must not leave this run's Stop disabled, out of the Tab order.
    assert page.locator("#stop").is_enabled()
    streaming_some_text(page)
    press(page, "Tab", "Tab")
    assert focused(page) == "Stop"
    press(page, "Enter")
    last_answer_state(page, "cancelled")
    assert focused(page) == "prompt"  # not lost on the page when Stop hides
    assert Message.objects.filter(role="assistant", status="cancelled").count() == 2

    # Attach: Enter on the button opens the chooser; the chip's remove button is reachable too.
    press(page, "Tab")
    assert focused(page) == "Attach image"
    with page.expect_file_chooser() as chooser:
        press(page, "Enter")
    chooser.value.set_files(files=FLAG)
    assert page.locator(".attach-chip .attach-name").inner_text() == "flag.png"
    assert focused(page) == "prompt"
    press(page, "Shift+Tab", "Shift+Tab")
    assert focused(page) == "Remove image"
    press(page, "Enter")
    assert page.locator(".attach-chip").count() == 0 and focused(page) == "Attach image"
    with page.expect_file_chooser() as chooser:
        press(page, "Enter")
    chooser.value.set_files(files=FLAG)
    page.keyboard.type("What colour is it?")
    press(page, "Enter", "Enter")  # twice: one upload all the same
    last_answer_state(page, "complete")
    assert "120 × 80" in page.locator("#messages .msg.assistant").last.locator(".content").inner_text()
    assert page.locator("#messages .msg.user .msg-note").last.inner_text() == (
        "Sent to Vision — General can't read images"
    )
    assert Message.objects.filter(role="assistant", agent="vision").count() == 1

    # Conversations: Tab into the list, arrows move, Enter opens.
    seed(users["user"], "Older talk", "What is Relay?", "Relay runs a team's agents.")
    seed(users["user"], "Newer talk", "What is a budget?", "A ceiling on spend.")
    page.reload()
    page.wait_for_selector('#connection[data-state="open"]')
    press(page, "Tab", "Enter", "Tab", "Tab")
    assert focused(page) == "+ New conversation"
    press(page, "Tab", "Tab")  # the search box, then the first conversation
    titles = page.locator("#conversation-list .conversation .c-title").all_inner_texts()
    assert titles[:2] == ["Newer talk", "Older talk"] and len(titles) == 3
    assert focused(page).startswith("Newer talk")
    press(page, "ArrowDown")
    assert focused(page).startswith("Older talk")
    press(page, "Enter")
    page.locator("#messages .msg.assistant", has_text="Relay runs a team's agents.").wait_for()
    assert page.locator("#conversation-title").inner_text() == "Older talk"
    assert page.locator('#conversation-list .conversation[aria-current="true"]').inner_text().startswith("Older talk")
    press(page, "End", "Enter")
    page.locator("#messages .msg.assistant", has_text="120 × 80").wait_for()
    press(page, "Home", "Enter")
    page.locator("#messages .msg.assistant", has_text="A ceiling on spend.").wait_for()
    assert page.locator("#conversation-title").inner_text() == "Newer talk"
    press(page, "ArrowUp")  # the first stays the first
    assert focused(page).startswith("Newer talk")

    # A new conversation puts the keyboard back in the message box.
    press(page, "Shift+Tab", "Shift+Tab", "Enter")
    assert focused(page) == "prompt" and page.locator("#conversation-title").inner_text() == "New conversation"
