"""The console in Chromium: navigation per role, streaming chat, Stop, budgets, keys, the admin."""

import re

import pytest

from tests.browser.conftest import screenshot
from tests.console.conftest import add_usage

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]
EXPECTED_NAV = {
    "admin": ["chat", "usage", "keys", "budgets", "training", "admin", "api-docs"],  # admin-site access follows the role
    "user": ["chat", "usage", "keys", "api-docs"],
    "viewer": ["chat", "usage", "keys", "api-docs"],
    "api_user": ["chat", "usage", "keys", "api-docs"],
}
# Records every change to the last answer: its text length and whether it was still streaming.
WATCH_ANSWER = """() => {
  window.__answer = {lengths: [], streaming: []};
  new MutationObserver(() => {
    const answer = document.querySelector('#messages .msg.assistant:last-child');
    if (!answer) return;
    window.__answer.lengths.push(answer.querySelector('.content').textContent.length);
    window.__answer.streaming.push(answer.dataset.state === 'streaming');
  }).observe(document.getElementById('messages'), {childList: true, subtree: true, characterData: true});
}"""


def open_chat(page):
    page.goto("/chat/")
    page.wait_for_selector('#connection[data-state="open"]')


def ask(page, agent: str, question: str):
    page.get_by_label("Agent").select_option(agent)
    page.get_by_role("textbox", name="Message").fill(question)
    page.get_by_role("button", name="Send").click()


def last_answer(page):
    return page.locator("#messages .msg.assistant").last


def test_each_role_sees_only_its_navigation(new_page, users):
    for role, user in users.items():
        page = new_page(user)
        assert page.locator("[data-nav]").evaluate_all("els => els.map(e => e.dataset.nav)") == EXPECTED_NAV[role]
        if role != "admin":
            assert page.goto("/budgets/").status == 403


def test_math_answer_streams_token_by_token(new_page, users):
    page = new_page(users["user"])
    open_chat(page)
    page.evaluate(WATCH_ANSWER)
    ask(page, "math", "integrate x^2 * sin(x)")
    answer = last_answer(page)
    # Mid-stream (the README's screenshot): some text is there, the answer is not finished.
    page.wait_for_function("() => (window.__answer.lengths.at(-1) || 0) > 40", timeout=60_000)
    screenshot(page, "chat")
    page.wait_for_selector('#messages .msg.assistant:last-child[data-state="complete"]', timeout=60_000)
    watched = page.evaluate("window.__answer")
    final = answer.locator(".content").inner_text()
    growing = [n for n, streaming in zip(watched["lengths"], watched["streaming"], strict=True)
               if streaming and 0 < n < len(final)]
    # Tokens arrived one after another, each shown before the answer was complete.
    assert len(set(growing)) >= 5, watched
    assert "cos" in final  # ∫x² sin x dx = -x² cos x + 2x sin x + 2 cos x
    assert answer.locator(".tool .tool-name").first.inner_text()  # the tool call was shown
    assert answer.locator('.tool[data-status="done"] .tool-duration').first.inner_text().endswith("ms")
    assert re.search(r"\d+ in / \d+ out tokens · \$", answer.locator(".meta .usage").inner_text())
    answer.get_by_role("button", name="Good answer").click()
    page.wait_for_selector('#messages .msg.assistant:last-child button[aria-label="Good answer"][aria-pressed="true"]')
    # The conversation is listed and reloads from the server with the same answer.
    page.reload()
    page.locator("#conversation-list .conversation").first.click()
    page.wait_for_selector("#messages .msg.assistant")
    assert last_answer(page).locator(".content").inner_text() == final


def test_stop_cancels_the_answer(new_page, users, settings):
    from agents.models import Message

    settings.RELAY_LOCAL_TOKEN_DELAY_MS = 60  # a long answer: Stop lands well before its end
    page = new_page(users["user"])
    open_chat(page)
    ask(page, "general", "Explain how Relay budgets, API keys, streaming and the audit trail work together.")
    answer = last_answer(page)
    page.wait_for_function(
        "() => document.querySelector('#messages .msg.assistant:last-child .content').textContent.length > 10")
    page.get_by_role("button", name="Stop").click()
    page.wait_for_selector('#messages .msg.assistant:last-child[data-state="cancelled"]')
    assert "Cancelled" in answer.locator(".meta").inner_text()
    assert page.get_by_role("button", name="Send").is_enabled()
    stored = Message.objects.filter(role="assistant").latest("created_at")
    assert stored.status == "cancelled" and stored.content


def test_a_hard_budget_stops_the_request_with_its_message(new_page, users):
    from billing.models import Budget

    user = users["user"]
    Budget.objects.create(organization=user.organization, scope="user", user=user, period="monthly",
                          limit_usd="0.000001", hard=True)
    page = new_page(user)
    open_chat(page)
    ask(page, "math", "2+2")
    page.wait_for_selector('#messages .msg.assistant:last-child[data-state="budget_stop"]')
    alert = last_answer(page).get_by_role("alert").inner_text()
    assert "monthly budget of user user" in alert and "resets on" in alert, alert


def test_create_and_revoke_a_key(new_page, users):
    from accounts.models import APIKey

    page = new_page(users["user"])
    page.goto("/keys/")
    page.get_by_role("button", name="Create key").click()
    assert "Give the key a name" in page.locator('[data-field="name"]').inner_text()  # validation message
    page.get_by_label("Name").fill("reporting script")
    page.get_by_label("Expires").select_option("30")
    page.get_by_role("button", name="Create key").click()
    secret = page.locator("#secret-value")
    secret.wait_for()
    assert secret.input_value().startswith("rk_")
    row = page.locator("tr", has_text="reporting script")
    assert row.get_attribute("data-state") == "active"
    page.evaluate("window.scrollTo(0, 0)")
    screenshot(page, "keys", full_page=True)
    key = APIKey.objects.get(owner=users["user"], name="reporting script")
    page.get_by_role("button", name="I have stored it").click()
    page.once("dialog", lambda dialog: dialog.accept())
    row.get_by_role("button", name="Revoke reporting script").click()
    page.wait_for_selector('tr[data-state="revoked"]')
    key.refresh_from_db()
    assert key.revoked_at is not None
    page.reload()  # nothing shows the secret again
    assert key.prefix[:7] in page.content() and secret.is_hidden()


def test_revoking_a_key_shows_the_keys_minted_through_it_revoked(new_page, users):
    from accounts.actions.keys import create_api_key

    parent = create_api_key(users["user"], "deploy bot").key
    create_api_key(users["user"], "deploy bot child", parent=parent)
    page = new_page(users["user"])
    page.goto("/keys/")
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Revoke deploy bot", exact=True).click()
    page.wait_for_selector('tr[data-state="revoked"]:has-text("deploy bot child")')


def test_usage_page_draws_its_charts(new_page, users):
    from billing.models import Budget

    admin = users["admin"]
    add_usage(admin, 60, agent="math", model="local-mini", tools=("sympy",), days=14)
    add_usage(users["user"], 30, agent="rag", model="gpt-4o-mini", tools=("search_documents",), days=10)
    add_usage(users["viewer"], 12, agent="code", model="gpt-4o", tools=("python",), days=6)
    Budget.objects.create(organization=admin.organization, scope="organization", period="monthly", limit_usd="5")
    Budget.objects.create(organization=admin.organization, scope="user", user=users["user"], period="daily",
                          limit_usd="0.5")
    page = new_page(admin)
    page.goto("/usage/")
    page.wait_for_function("() => window.Chart && Object.keys(Chart.instances).length === 8")
    assert page.locator('[data-figures="organization"] [data-stat="requests"]').inner_text() == "102"
    assert page.locator(".budget").count() == 2
    assert page.get_by_role("link", name="Export usage (CSV)").is_visible()
    screenshot(page, "usage", full_page=True)


def test_pages_fit_a_phone(new_page, users):
    page = new_page(users["user"], width=390, height=844)
    for path in ("/", "/chat/", "/usage/", "/keys/"):
        page.goto(path)
        overflow = page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, (path, overflow)


def test_budgets_page_validates_and_saves(new_page, users):
    from billing.models import Budget

    page = new_page(users["admin"])
    page.goto("/budgets/")
    page.get_by_label("Applies to").select_option("team")
    page.get_by_label("Limit (USD)").fill("abc")
    page.get_by_role("button", name="Save budget").click()
    message = page.locator('[data-field="limit_usd"]:not(:empty)')
    message.wait_for()
    assert "limit_usd" in message.inner_text() or "number" in message.inner_text().lower(), message.inner_text()
    page.get_by_label("Limit (USD)").fill("25.00")
    page.get_by_role("button", name="Save budget").click()
    page.wait_for_selector("tr[data-budget-id]")
    budget = Budget.objects.get(scope="team")
    assert budget.limit_usd == 25 and budget.team.name == "Research"


def test_admin_creates_a_user_and_a_budget(new_page, org, users):
    from accounts.actions.users import create_user
    from accounts.models import User
    from billing.models import Budget

    root = create_user("root", organization=org, role="admin", password="correct horse battery staple")
    root.is_staff = root.is_superuser = True
    root.save(update_fields=["is_staff", "is_superuser"])
    page = new_page(root, width=1600, height=900)
    page.goto("/admin/accounts/user/add/")
    page.fill("#id_username", "newhire")
    page.fill("#id_password1", "a long new passphrase 77")
    page.fill("#id_password2", "a long new passphrase 77")
    page.select_option("#id_organization", label=str(org))
    page.locator('#id_groups_from option[title="user"]').dblclick()  # the admin's two-box group picker
    page.locator("input[name=_save]").click()
    page.wait_for_selector(".messagelist .success")
    newhire = User.objects.get(username="newhire")
    assert newhire.organization == org and newhire.role == "user"

    page.goto("/admin/billing/budget/add/")
    page.select_option("#id_organization", label=str(org))
    page.select_option("#id_scope", "user")
    page.fill("#id_user", str(newhire.pk))
    page.select_option("#id_period", "weekly")
    page.fill("#id_limit_usd", "12.50")
    page.fill("#id_alert_thresholds", "[50, 100]")
    page.locator("input[name=_save]").click()
    page.wait_for_selector(".messagelist .success")
    budget = Budget.objects.get(user=newhire)
    assert (budget.period, str(budget.limit_usd).rstrip("0"), budget.hard) == ("weekly", "12.5", True)
    page.goto("/admin/audit/auditevent/")
    page.locator("#toggle-nav-sidebar").click()  # the list gets the whole width
    page.evaluate("window.scrollTo(0, 0)")
    screenshot(page, "admin")
