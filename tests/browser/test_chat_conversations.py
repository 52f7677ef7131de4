"""Conversations you can manage, in Chromium: search, pin, rename, delete; copy, regenerate with
versions browsed by arrows, edit and resend."""

import pytest

from agents.models import Conversation, Message
from tests.browser.test_console import ask, open_chat

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]
ANSWERED = '#messages .msg.assistant:last-child[data-state="complete"] .msg-actions'


def answered(page):
    """The last answer is stored and its actions are shown (the page has read the conversation's tree)."""
    page.wait_for_selector(ANSWERED, timeout=60_000)


def sidebar(page):
    return page.locator("#conversation-list .conversation-item")


def item(page, title: str):
    return page.locator("#conversation-list .conversation-item", has_text=title)


def test_search_pin_rename_and_delete_conversations(new_page, users):
    page = new_page(users["user"])
    open_chat(page)
    ask(page, "math", "Hi there! Could you please integrate x^2?")
    answered(page)
    # The title summarises the question: no greeting, no filler.
    item(page, "Integrate x^2?").wait_for()
    page.get_by_role("button", name="+ New conversation").click()
    ask(page, "math", "solve x^2-5x+6=0")
    answered(page)
    item(page, "Solve x^2-5x+6=0").wait_for()
    assert sidebar(page).count() == 2

    search = page.get_by_label("Search conversations")
    search.fill("integrate")
    page.wait_for_function("() => document.querySelectorAll('#conversation-list .conversation-item').length === 1")
    assert sidebar(page).first.inner_text().startswith("Integrate x^2?")
    search.fill("nothing like it")
    page.locator("#no-conversations", has_text="No conversations match.").wait_for()
    search.fill("")
    page.wait_for_function("() => document.querySelectorAll('#conversation-list .conversation-item').length === 2")

    # Pinning moves the older conversation to the top, and it stays there.
    assert sidebar(page).first.inner_text().startswith("Solve")
    page.get_by_role("button", name="Pin: Integrate x^2?").click()
    page.wait_for_selector('#conversation-list .conversation-item:first-child[data-pinned="true"]')
    assert sidebar(page).first.inner_text().startswith("Integrate x^2?")
    assert Conversation.objects.get(title="Integrate x^2?").pinned

    item(page, "Solve").get_by_role("button", name="Rename: Solve x^2-5x+6=0").click()
    rename = page.get_by_label("New title")
    rename.fill("Quadratic ✓ 二次")
    rename.press("Enter")
    item(page, "Quadratic ✓ 二次").wait_for()
    assert page.locator("#conversation-title").inner_text() == "Quadratic ✓ 二次"  # the open one
    assert Conversation.objects.filter(title="Quadratic ✓ 二次").count() == 1
    # Escape cancels a rename.
    page.get_by_role("button", name="Rename: Quadratic ✓ 二次").click()
    page.get_by_label("New title").fill("never saved")
    page.get_by_label("New title").press("Escape")
    item(page, "Quadratic ✓ 二次").wait_for()

    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Delete: Quadratic ✓ 二次").click()
    page.wait_for_function("() => document.querySelectorAll('#conversation-list .conversation-item').length === 1")
    assert page.locator("#conversation-title").inner_text() == "New conversation"
    assert list(Conversation.objects.values_list("title", flat=True)) == ["Integrate x^2?"]
    page.once("dialog", lambda dialog: dialog.dismiss())  # declining the confirmation keeps it
    page.get_by_role("button", name="Delete: Integrate x^2?").click()
    page.reload()
    page.wait_for_selector('#connection[data-state="open"]')
    assert sidebar(page).count() == 1 and Conversation.objects.count() == 1


def test_copy_regenerate_with_versions_and_edit_and_resend(new_page, users):
    page = new_page(users["user"])
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    open_chat(page)
    ask(page, "math", "integrate x^2")
    answered(page)
    first = Message.objects.get(role="assistant")
    answer = page.locator("#messages .msg.assistant").last

    answer.get_by_role("button", name="Copy").click()
    assert page.evaluate("() => navigator.clipboard.readText()") == first.content

    # Regenerate: a second version of the answer; the arrows switch between the two.
    answer.get_by_role("button", name="Regenerate").click()
    page.wait_for_selector("#messages .msg.assistant .version:text-is('2/2')", timeout=60_000)
    answered(page)
    second = Message.objects.filter(role="assistant").exclude(pk=first.pk).get()
    assert second.parent_id == first.parent_id and second.status == "complete"
    assert page.locator("#messages .msg").count() == 2  # the question once, one version of the answer shown
    assert answer.get_attribute("data-message-id") == str(second.pk)
    answer.get_by_role("button", name="Previous version").click()
    page.wait_for_selector(f'#messages .msg.assistant[data-message-id="{first.pk}"] .version:text-is("1/2")')
    assert answer.get_by_role("button", name="Previous version").is_disabled()
    answer.get_by_role("button", name="Next version").click()
    page.wait_for_selector(f'#messages .msg.assistant[data-message-id="{second.pk}"] .version:text-is("2/2")')

    # Edit and resend: the edited question and its answer are a new branch beside the first.
    question = page.locator("#messages .msg.user").last
    question.get_by_role("button", name="Edit").click()
    page.get_by_label("Edit message").fill("integrate x^3")
    page.get_by_role("button", name="Save and send").click()
    page.wait_for_selector("#messages .msg.user .version:text-is('2/2')", timeout=60_000)
    answered(page)
    # Typeset by KaTeX (static/js/render.js): its annotation keeps the LaTeX the answer carried.
    assert "x^{4}" in " ".join(answer.locator(".content .katex annotation").all_text_contents())
    assert question.locator(".content").inner_text() == "integrate x^3"
    assert answer.locator(".version").count() == 0  # the new branch's answer has one version
    question.get_by_role("button", name="Previous version").click()
    page.wait_for_selector("#messages .msg.user .version:text-is('1/2')")
    assert question.locator(".content").inner_text() == "integrate x^2"
    assert answer.locator(".version").inner_text() == "2/2"  # that branch keeps its two answers
    edited = Message.objects.get(role="user", content="integrate x^3")
    assert edited.parent_id is None and Message.objects.filter(parent=edited, role="assistant").count() == 1

    # A new question follows the version on screen, not the latest one.
    answer.get_by_role("button", name="Previous version").click()
    page.wait_for_selector(f'#messages .msg.assistant[data-message-id="{first.pk}"]')
    ask(page, "math", "integrate x^4")
    answered(page)
    assert Message.objects.get(role="user", content="integrate x^4").parent_id == first.pk
    assert page.locator("#messages .msg.assistant").first.get_attribute("data-message-id") == str(first.pk)

    # After a reload the page shows the latest branch again, with its versions.
    page.reload()
    page.wait_for_selector('#connection[data-state="open"]')
    page.locator("#conversation-list .conversation").first.click()
    page.wait_for_selector("#messages .msg.user .version:text-is('2/2')")
    assert page.locator("#messages .msg.user .content").inner_text() == "integrate x^3"
