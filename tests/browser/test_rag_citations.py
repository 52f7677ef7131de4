"""RAG answers in Chromium: each passage once, clean snippets, citation chips that preview the
passage on hover and focus and open the document at it, live and after reloading the conversation;
another organization's document is never cited nor openable."""

import re

import pytest

from agents.actions.documents import upload_document
from tests.browser.test_console import ask, last_answer, open_chat

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]
DONE = '#messages .msg.assistant:last-child[data-state="complete"]'
HERON = """# Pricing plans

Project Heron ships in April. Project Heron ships in April.

| Plan | Price | Seats |
|------|------:|:-----:|
| Basic | $10 | 5 |
| Team | $50 | 25 |
"""


@pytest.fixture
def documents(users, other_users):
    mine = upload_document(users["user"], name="heron.md", data=HERON.encode(), content_type="text/markdown")
    upload_document(users["user"], name="heron-copy.md", data=HERON.encode(), content_type="text/markdown")
    theirs = upload_document(other_users["user"], name="osprey.md", content_type="text/markdown",
                             data=b"# Osprey secret\n\nProject Heron pricing plan seats: the Osprey price is secret.")
    return mine, theirs


def check_answer(page, mine):
    answer = last_answer(page)
    content = answer.locator(".content")
    text = content.inner_text()
    assert text.count("Basic · $10 · 5.") == 1, text  # the passage and its copy: once
    assert "|" not in text and "---" not in text and "# Pricing" not in text
    assert "Osprey" not in text
    assert not re.search(r"Sources:\s*\[1\]", text)  # the plain Sources line became a row of chips

    chips = content.locator("a.cite-chip")
    assert chips.count() >= 2 and content.locator(".cite-sources a.cite-chip").count() >= 1
    first = content.locator('a.cite-chip[data-citation="1"]').first
    assert "Pricing plans" in first.inner_text()
    assert first.get_attribute("href") == f"/documents/{mine.pk}/#chunk-0"
    tip = page.locator("#" + first.get_attribute("aria-describedby"))
    assert tip.get_attribute("role") == "tooltip" and tip.is_hidden()

    first.hover()
    tip.wait_for(state="visible")
    preview = tip.inner_text()
    assert "Heron ships in April" in preview and "Basic · $10 · 5." in preview and "|" not in preview
    page.mouse.move(0, 0)
    tip.wait_for(state="hidden")

    first.focus()  # keyboard: the same preview; Escape hides it
    tip.wait_for(state="visible")
    first.press("Escape")
    tip.wait_for(state="hidden")
    return first


def test_citation_chips_preview_and_open_the_passage_live_and_after_reload(new_page, users, documents):
    mine, theirs = documents
    page = new_page(users["user"])
    open_chat(page)
    ask(page, "rag", "Heron plan price seats")
    page.wait_for_selector(DONE, timeout=60_000)
    check_answer(page, mine).click()
    page.wait_for_url(f"**/documents/{mine.pk}/#chunk-0")
    cited = page.locator(".document-part:target")
    assert "Project Heron ships in April." in cited.inner_text()
    assert "| Basic | $10 | 5 |" in cited.inner_text()  # the document page shows the stored text

    open_chat(page)
    page.locator("#conversation-list button.conversation").first.click()
    page.wait_for_selector(DONE)
    check_answer(page, mine)

    # Another organization's document: never cited (above), and its page is a 404.
    response = page.goto(f"/documents/{theirs.pk}/")
    assert response.status == 404
