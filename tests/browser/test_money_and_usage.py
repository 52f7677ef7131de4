"""Money shown one way in Chromium (usage, budgets, chat), and the usage page's per-user and
per-key tables for an organization's admin and for a member."""

import re
from datetime import timedelta

import pytest

from billing.money import format_usd
from tests.billing.test_money_display import DISPLAY
from tests.browser.conftest import screenshot
from tests.console.conftest import add_usage

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]
MINUTES = timedelta(minutes=10)  # this month's and this week's, for the budgets too
AMOUNT = re.compile(r"-?\$[\d,]*\.?\d*(?:[eE][-+]?\d+)?")


def amounts(page) -> list[str]:
    return AMOUNT.findall(page.locator("main").inner_text())


def assert_one_rule(shown: list[str], where: str):
    """Every amount on the page is written by the rule, and none of them is a non-zero "$0.00"
    (the fixtures spend on every row, so no amount shown here is zero)."""
    assert shown, where
    for text in shown:
        assert "e" not in text.lower() and text != "$0.00", (where, text)
        assert re.fullmatch(r"\$(\d{1,3}(,\d{3})*\.\d\d|0\.0\d*[1-9])", text), (where, text)


@pytest.fixture
def spend(users):
    from accounts.actions.keys import create_api_key
    from billing.models import Budget

    keys = {role: create_api_key(users[role], f"{role}-deploy-key").key for role in ("admin", "user", "viewer")}
    add_usage(users["admin"], 3, key=keys["admin"], cost="0.0004", span=MINUTES)
    add_usage(users["user"], 4, key=keys["user"], cost="0.0125", span=MINUTES)
    add_usage(users["user"], 2, cost="0.000031", span=MINUTES)
    add_usage(users["viewer"], 1, key=keys["viewer"], cost="1234.5", span=MINUTES)
    org = users["admin"].organization
    Budget.objects.create(organization=org, scope="organization", period="monthly", limit_usd="5000")
    Budget.objects.create(organization=org, scope="api_key", api_key=keys["admin"], period="monthly",
                          limit_usd="0.5")
    return keys


def rows(page, table: str) -> dict[str, str]:
    """{first cell: cost cell} of one breakdown table."""
    return dict(page.locator(f"#{table} tbody tr").evaluate_all(
        "trs => trs.map(tr => [tr.cells[0].innerText.trim(), tr.cells[tr.cells.length - 1].innerText.trim()])"))


def test_an_admin_sees_spend_per_user_and_per_key(new_page, users, spend):
    page = new_page(users["admin"])
    page.goto("/usage/?period=7d")
    assert page.get_by_role("heading", name="Spend by user and key").is_visible()
    assert rows(page, "usage-by-user") == {"viewer": "$1,234.50", "user": "$0.05", "admin": "$0.0012"}
    by_key = rows(page, "usage-by-key")
    assert {name.split()[0]: cost for name, cost in by_key.items()} == {
        "viewer-deploy-key": "$1,234.50", "user-deploy-key": "$0.05", "admin-deploy-key": "$0.0012",
        "No": "$0.000062"}  # the console's own requests: no key
    assert_one_rule(amounts(page), "usage (admin)")
    screenshot(page, "usage-breakdown", full_page=True)


def test_a_member_sees_only_their_own_spend(new_page, users, spend):
    page = new_page(users["user"])
    page.goto("/usage/?period=7d")
    assert page.get_by_role("heading", name="Your spend by key").is_visible()
    assert rows(page, "usage-by-user") == {"user": "$0.05"}
    assert {name.split()[0] for name in rows(page, "usage-by-key")} == {"user-deploy-key", "No"}
    assert "viewer-deploy-key" not in page.content() and "admin-deploy-key" not in page.content()
    assert_one_rule(amounts(page), "usage (member)")


def test_the_budgets_page_and_the_browser_follow_the_rule(new_page, users, spend):
    page = new_page(users["admin"])
    page.goto("/budgets/")
    shown = amounts(page)
    assert "$0.0012" in shown and "$0.50" in shown and "$5,000.00" in shown, shown
    assert_one_rule(shown, "budgets")
    # The page's own Relay.usd, on the table Python's format_usd is tested with.
    values = [v for v in DISPLAY]
    assert page.evaluate("values => values.map(v => Relay.usd(v))", values) == [format_usd(v) for v in values]


def test_the_chat_shows_an_answers_cost_by_the_rule(new_page, users):
    from agents.models import Message

    page = new_page(users["user"])
    page.goto("/chat/")
    page.wait_for_selector('#connection[data-state="open"]')
    page.get_by_label("Agent").select_option("math")
    page.get_by_role("textbox", name="Message").fill("what is 2+2")
    page.get_by_role("button", name="Send").click()
    page.wait_for_selector('#messages .msg.assistant:last-child[data-state="complete"]', timeout=60_000)
    usage = page.locator("#messages .msg.assistant").last.locator(".meta .usage").inner_text()
    answer = Message.objects.filter(role="assistant").latest("created_at")
    assert answer.cost > 0 and format_usd(answer.cost) in usage, (usage, answer.cost)
    assert_one_rule(AMOUNT.findall(usage), "chat")
