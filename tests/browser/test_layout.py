"""Layout in Chromium at a laptop's 1366x768 and a phone's 390x844, with data made to break it: no page
scrolls sideways, long names are cut with an ellipsis (the full text kept), wide answers scroll in
their own box, and on the phone the conversations slide out from a button (static/js/sidebar.js)."""

from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import pytest

from tests.browser.conftest import screenshot
from tests.browser.test_console import ask, open_chat
from tests.console.conftest import add_usage

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]
DESKTOP, PHONE = (1366, 768), (390, 844)
LONG_TITLE = "Q" + "x" * 199  # 200 characters, no space to break at
UNICODE_TITLE = ("二次方程式の解法と判別式✓ " * 20)[:200]
CODE_LINE = "value = compute(" + ", ".join(f"argument_{i:03d}" for i in range(22)) + ")"
ANSWER = "\n".join(
    [
        "Here is the table.",
        "",
        "| " + " | ".join(f"Column header {i}" for i in range(12)) + " |",
        "|" + " --- |" * 12,
        "| " + " | ".join(f"cell_value_{i:02d}_wide_enough" for i in range(12)) + " |",
        "",
        "```python",
        CODE_LINE,
        "```",
        "",
        "An unbroken word: " + "W" * 260 + ".",
    ]
)
SLID_IN = "() => document.getElementById('chat-side').getBoundingClientRect().left >= 0"
NO_PAGE_OVERFLOW = "() => document.scrollingElement.scrollWidth <= window.innerWidth"
# The box, or a box inside it (highlight.js makes the code element the scroller), scrolls sideways.
SCROLLS_INSIDE = """el => [el, ...el.querySelectorAll('*')].some(n =>
  n.scrollWidth > n.clientWidth && ['auto', 'scroll'].includes(getComputedStyle(n).overflowX))"""
BOX = "el => { const r = el.getBoundingClientRect(); return {left: r.left, right: r.right, width: r.width}; }"


@pytest.fixture
def hostile(users, org):
    """Long key, team and budget-target names, usage for the charts, and two conversations with long titles."""
    from accounts.actions.keys import create_api_key
    from accounts.actions.teams import create_team
    from agents.actions.conversations import create_conversation
    from billing.actions.budgets import set_budget

    admin = users["admin"]
    key = create_api_key(admin, "nightly-" + "reporting" * 10 + "-script").key
    create_api_key(admin, "キー " * 30)
    team = create_team(org, "Team" + "-platform-infrastructure" * 8, actor=admin)
    # In a thread of its own: set_budget reaches the ledger through async_to_sync, which refuses the
    # thread where Playwright's event loop runs.
    with ThreadPoolExecutor(1) as pool:
        for scope, target in (("team", team.pk), ("api_key", key.pk)):
            pool.submit(
                set_budget,
                actor=admin,
                organization=org,
                scope=scope,
                target=target,
                period="monthly",
                limit_usd=Decimal("25.00"),
                hard=True,
                alert_thresholds=[50, 80],
            ).result()
    add_usage(admin, 12, key=key)
    create_conversation(admin, agent="general", title=UNICODE_TITLE)
    return create_conversation(admin, agent="general", title="A short one")


def settled(page, path: str):
    """Open path and wait for what its script builds (keys' table, usage charts, the chat's socket)."""
    page.goto(path)
    waits = {"/keys/": "#keys-body tr", "/usage/": ".chart-box canvas", "/chat/": '#connection[data-state="open"]',
             "/training/": "#dataset-body tr:not(:has-text(\"Loading\"))"}
    if path in waits:
        page.wait_for_selector(waits[path])
    page.wait_for_load_state("load")


def assert_no_page_overflow(page, where: str):
    widths = page.evaluate("() => [document.scrollingElement.scrollWidth, window.innerWidth]")
    assert page.evaluate(NO_PAGE_OVERFLOW), f"{where} scrolls sideways: {widths}"


def answer_with_wide_content(page, fake_upstream):
    fake_upstream.configure(chunks=[ANSWER[:400], ANSWER[400:]], tps=50)
    open_chat(page)
    ask(page, "general", "show me something wide")
    page.wait_for_selector('#messages .msg.assistant:last-child[data-state="complete"] .table-scroll', timeout=60_000)
    return page.locator("#conversation-list .conversation").first.get_attribute("data-id")


def open_sidebar(page):
    page.get_by_role("button", name="Conversations", exact=True).click()
    page.wait_for_selector('#chat[data-side="open"] #chat-side')
    page.wait_for_function(SLID_IN)  # measured once it has slid in


def assert_wide_answer_scrolls_in_its_boxes(page, width: int):
    table_box = page.locator("#messages .msg.assistant .table-scroll").first
    code = page.locator("#messages .msg.assistant .code-block").first
    for box in (table_box, code):
        assert box.evaluate(SCROLLS_INSIDE), f"{box} should scroll inside its own box"
        assert box.evaluate(BOX)["right"] <= width
    assert table_box.locator("table th").count() == 12
    assert CODE_LINE in code.inner_text()
    # The unbroken word wraps: its paragraph is no wider than the message.
    message = page.locator("#messages .msg.assistant").first
    paragraph = message.locator(".content p", has_text="An unbroken word").evaluate(BOX)
    assert paragraph["right"] <= message.evaluate(BOX)["right"] + 0.5


def assert_title_ellipsised(locator, full: str):
    assert locator.evaluate("el => getComputedStyle(el).textOverflow") == "ellipsis"
    assert locator.evaluate("el => el.scrollWidth > el.clientWidth")  # cut on screen...
    assert locator.get_attribute("title") == full  # ...and whole for a pointer
    assert locator.text_content() == full  # ...and for a screen reader


@pytest.mark.parametrize("size", [DESKTOP, PHONE], ids=["1366", "390"])
def test_no_console_page_scrolls_sideways(new_page, users, hostile, fake_upstream, upstream_model, size):
    from agents.actions.conversations import update_conversation
    from agents.models import Conversation

    width, height = size
    page = new_page(users["admin"], width=width, height=height)
    conversation_id = answer_with_wide_content(page, fake_upstream)
    update_conversation(Conversation.objects.get(pk=conversation_id), actor=users["admin"], title=LONG_TITLE)

    settled(page, "/chat/")
    assert_no_page_overflow(page, "the chat")
    if width < 900:
        open_sidebar(page)
    page.locator(f'#conversation-list .conversation[data-id="{conversation_id}"]').click()
    page.wait_for_selector("#messages .msg.assistant .table-scroll")
    page.wait_for_function("t => document.getElementById('conversation-title').textContent === t", arg=LONG_TITLE)
    assert_no_page_overflow(page, "the chat with a wide answer")
    assert_wide_answer_scrolls_in_its_boxes(page, width)
    assert_title_ellipsised(page.locator("#conversation-title"), LONG_TITLE)
    head = page.locator(".chat-head").evaluate(BOX)
    assert head["right"] <= width and page.locator("#connection").evaluate(BOX)["right"] <= head["right"]

    if width < 900:
        open_sidebar(page)
    side = page.locator("#chat-side").evaluate(BOX)
    for title in (LONG_TITLE, UNICODE_TITLE):
        listed = page.locator("#conversation-list .c-title", has_text=title[:20])
        assert_title_ellipsised(listed, title)
        assert listed.evaluate(BOX)["right"] <= side["right"]
    assert_no_page_overflow(page, "the chat with its conversations open")

    for path in ("/", "/usage/", "/keys/", "/budgets/", "/training/"):
        settled(page, path)
        assert_no_page_overflow(page, path)
    # The long names are there, inside the page (wrapped, or in a table that scrolls in its own box).
    settled(page, "/keys/")
    assert page.get_by_text("nightly-reporting", exact=False).first.is_visible()
    settled(page, "/budgets/")
    assert page.locator("#budget-body", has_text="Team-platform-infrastructure").count() == 1
    settled(page, "/usage/")
    for canvas in page.locator(".chart-box canvas").all():
        assert canvas.evaluate(BOX)["right"] <= width

    # Pages of other people: a 403 and the sign-in form.
    denied = new_page(users["user"], width=width, height=height)
    assert denied.goto("/budgets/").status == 403
    assert_no_page_overflow(denied, "the 403 page")
    anonymous = new_page(width=width, height=height)
    settled(anonymous, "/login/")
    assert_no_page_overflow(anonymous, "the sign-in page")
    for page_ in (page, denied):  # the top bar fits: every link reachable inside the viewport's width
        bar = page_.locator(".topbar").evaluate(BOX)
        assert bar["right"] <= width


def test_phone_conversations_slide_out_and_back(new_page, users, hostile):
    page = new_page(users["admin"], width=PHONE[0], height=PHONE[1])
    open_chat(page)
    toggle = page.get_by_role("button", name="Conversations", exact=True)
    panel = page.locator("#chat-side")
    assert toggle.is_visible() and toggle.get_attribute("aria-controls") == "chat-side"
    assert toggle.evaluate(BOX)["width"] >= 40 and toggle.evaluate("el => el.getBoundingClientRect().height") >= 40
    assert not panel.is_visible() and toggle.get_attribute("aria-expanded") == "false"

    def focused_inside() -> bool:
        return panel.evaluate("el => el.contains(document.activeElement)")

    def toggle_focused() -> bool:
        return toggle.evaluate("el => el === document.activeElement")

    toggle.click()
    panel.wait_for(state="visible")
    assert toggle.get_attribute("aria-expanded") == "true" and focused_inside()
    # It slides in over the chat and ends on screen.
    page.wait_for_function(SLID_IN)
    assert panel.evaluate(BOX)["right"] <= PHONE[0]
    page.keyboard.press("Escape")
    panel.wait_for(state="hidden")
    assert toggle.get_attribute("aria-expanded") == "false" and toggle_focused()

    # Keyboard only: Enter opens it, Tab stays inside, Escape closes it.
    page.keyboard.press("Enter")
    panel.wait_for(state="visible")
    assert focused_inside()
    page.keyboard.press("Tab")
    assert focused_inside()
    page.keyboard.press("Escape")
    panel.wait_for(state="hidden")
    assert toggle_focused()

    # A tap outside the panel (on the dimmed chat) closes it.
    toggle.click()
    panel.wait_for(state="visible")
    page.mouse.click(PHONE[0] - 20, PHONE[1] // 2)
    panel.wait_for(state="hidden")
    assert toggle.get_attribute("aria-expanded") == "false"

    # Choosing a conversation loads it and closes the panel.
    toggle.click()
    page.locator("#conversation-list .conversation", has_text="A short one").click()
    page.wait_for_function("() => document.getElementById('conversation-title').textContent === 'A short one'")
    panel.wait_for(state="hidden")
    assert toggle_focused()
    assert (
        page.locator('#conversation-list .conversation[aria-current="true"]').text_content().startswith("A short one")
    )

    # So does starting a new one; the message box gets the focus.
    toggle.click()
    page.get_by_role("button", name="+ New conversation").click()
    panel.wait_for(state="hidden")
    assert page.locator("#conversation-title").inner_text() == "New conversation"
    assert page.evaluate("() => document.activeElement.id") == "prompt"
    assert page.evaluate(NO_PAGE_OVERFLOW)


def test_desktop_keeps_the_sidebar_beside_the_chat(new_page, users, hostile):
    page = new_page(users["admin"], width=DESKTOP[0], height=DESKTOP[1])
    open_chat(page)
    assert not page.locator("#side-toggle").is_visible()
    side, main = page.locator("#chat-side").evaluate(BOX), page.locator(".chat-main").evaluate(BOX)
    assert page.locator("#chat-side").is_visible() and side["width"] >= 250
    assert side["right"] <= main["left"]  # beside, not over
    page.locator("#conversation-list .conversation", has_text="A short one").click()
    page.wait_for_function("() => document.getElementById('conversation-title').textContent === 'A short one'")
    assert page.locator("#chat-side").is_visible()


def test_the_phone_chat_in_light_and_dark(new_page, users):
    """The README's phone screenshots: a typeset answer in light, the conversations open in dark."""
    page = new_page(users["user"], *PHONE)
    open_chat(page)
    ask(page, "math", "integrate x^2 sin x")
    answer = page.locator("#messages .msg.assistant").last
    page.wait_for_selector('#messages .msg.assistant:last-child[data-state="complete"]', timeout=60_000)
    assert answer.locator(".katex").count() > 0
    assert page.evaluate(NO_PAGE_OVERFLOW), "the phone chat scrolls sideways"
    icon = page.locator("#side-toggle .i").bounding_box()  # the menu icon is drawn, not only its button
    assert icon and icon["width"] >= 16 and icon["height"] >= 16, icon
    screenshot(page, "chat-mobile")

    page.emulate_media(color_scheme="dark")  # the theme follows the system until one is picked
    page.wait_for_function("() => document.documentElement.dataset.theme === 'dark' || "
                           "getComputedStyle(document.body).backgroundColor !== 'rgb(255, 255, 255)'")
    open_sidebar(page)
    assert page.locator("#conversation-list .conversation").first.inner_text().startswith("Integrate x^2 sin x")
    background = page.evaluate("() => getComputedStyle(document.body).backgroundColor")
    red, green, blue = (int(part) for part in background[background.index("(") + 1:-1].split(",")[:3])
    assert red + green + blue < 3 * 80, background  # dark, not the light page
    screenshot(page, "chat-mobile-dark")
