"""An organization's admin (role `admin`, not a superuser) runs their organization in /admin/, in Relay's look."""

import pytest

from tests.browser.conftest import screenshot

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]
# What each step below records (audit/actions.py), newest first: the admin's form records a role change
# as user.updated with changes.role (accounts.actions.users.save_user: one event per save).
EXPECTED_ACTIONS = ["api_key.revoked", "budget.created", "user.updated", "user.created"]
DARK_BODY = "rgb(13, 21, 38)"  # --body-bg of static/css/admin.css, dark
LIGHT_BODY = "rgb(244, 246, 250)"


def save(page):
    page.locator("input[name=_save]").click()
    page.wait_for_selector(".messagelist .success")


def test_an_organization_admin_manages_their_organization_in_the_admin(new_page, users, other_users):
    from accounts.actions.keys import create_api_key
    from accounts.models import APIKey, User
    from billing.models import Budget

    admin, member = users["admin"], users["user"]
    team = member.team
    key = create_api_key(users["viewer"], "leaked laptop").key
    create_api_key(other_users["viewer"], "elsewhere")  # another organization's: never listed
    assert not admin.is_superuser and admin.is_staff  # admin-site access follows the role

    page = new_page(admin, width=1440, height=900)
    refused = []
    page.on("console", lambda message: refused.append(message.text) if "Content Security Policy" in message.text else None)
    page.locator('[data-nav="admin"]').click()  # the console's own link
    page.wait_for_url("**/admin/")
    assert page.locator('.topbar [data-nav="admin"][aria-current="page"]').count() == 1  # Relay's bar, back to the console
    assert page.locator('.topbar [data-nav="chat"]').get_attribute("href") == "/chat/"
    assert page.locator(".admin-scope").inner_text() == str(admin.organization)

    # A new member in a team, with a role (the member form: no groups, permissions or flags).
    page.get_by_role("link", name="Users").first.click()
    page.get_by_role("link", name="Add user").click()
    assert page.locator("#id_groups_from, #id_is_superuser, #id_is_staff").count() == 0
    page.fill("#id_username", "newhire")
    page.fill("#id_password1", "a long new passphrase 77")
    page.fill("#id_password2", "a long new passphrase 77")
    page.fill("#id_email", "newhire@example.com")
    page.select_option("#id_team", label=str(team))
    page.select_option("#id_role", "user")
    save(page)
    newhire = User.objects.get(username="newhire")
    assert (newhire.organization, newhire.team, newhire.role) == (admin.organization, team, "user")

    # Lower another member's role: user -> viewer.
    page.goto(f"/admin/accounts/user/{member.pk}/change/")
    page.select_option("#id_role", "viewer")
    save(page)
    member.refresh_from_db()
    assert member.role == "viewer"

    # A budget for the team (the organization is theirs, fixed).
    page.goto("/admin/billing/budget/add/")
    assert page.locator("#id_organization").is_disabled()
    page.select_option("#id_scope", "team")
    page.fill("#id_team", str(team.pk))
    page.select_option("#id_period", "monthly")
    page.fill("#id_limit_usd", "40")
    save(page)
    budget = Budget.objects.get(team=team)
    assert (budget.organization, budget.scope, budget.limit_usd) == (admin.organization, "team", 40)

    # Revoke a key with the changelist's action.
    page.goto("/admin/accounts/apikey/")
    assert "elsewhere" not in page.locator("#result_list").inner_text()
    page.locator("tr", has_text="leaked laptop").locator("input.action-select").check()
    page.select_option("select[name=action]", "revoke_selected")
    page.locator("button[name=index]").click()
    page.wait_for_selector(".messagelist .success")
    assert APIKey.objects.get(pk=key.pk).revoked_at is not None

    # The trail of exactly those actions, by this admin, in the audit list.
    page.goto("/admin/audit/auditevent/?q=admin")
    rows = page.locator("#result_list tbody tr")
    actions = rows.locator("td.field-action").all_inner_texts()
    assert [a for a in actions if a in EXPECTED_ACTIONS] == EXPECTED_ACTIONS, actions  # once each, in order
    resources = dict(zip(actions, rows.locator("td.field-resource").all_inner_texts(), strict=True))
    assert resources["user.updated"] == f"user:{member.pk}" and resources["api_key.revoked"] == f"api_key:{key.pk}"
    rows.filter(has_text="user.updated").locator("th a").click()
    assert '"role": ["user", "viewer"]' in page.locator(".field-metadata").inner_text()
    page.go_back()
    assert page.evaluate("getComputedStyle(document.body).backgroundColor") == LIGHT_BODY
    page.locator("#toggle-nav-sidebar").click()  # the list gets the whole width
    page.evaluate("window.scrollTo(0, 0)")
    screenshot(page, "admin-org")

    # Dark: the admin's own theme toggle (auto, here light, -> dark), a script file under the CSP.
    page.locator(".topbar .theme-toggle").click()
    assert page.evaluate("document.documentElement.dataset.theme") == "dark"
    assert page.evaluate("getComputedStyle(document.body).backgroundColor") == DARK_BODY
    screenshot(page, "admin-org-dark")
    assert refused == []


def test_a_member_without_admin_access_gets_relays_403_page(new_page, users):
    page = new_page(users["user"])
    assert page.locator('[data-nav="admin"]').count() == 0  # the console offers no link
    response = page.goto("/admin/accounts/user/")
    assert response.status == 403
    assert "admin console" in page.locator("main").inner_text()
    assert page.locator('.topbar [data-nav="chat"]').count() == 1 and page.locator("#id_username").count() == 0
