"""axe-core (static/vendor/axe-core) in Chromium on every console page, for each role that can open it,
and on the admin index (a superuser and an organization's admin), in the light and the dark theme:
no violation of impact serious or critical."""

from pathlib import Path

import pytest

from tests.browser.conftest import sign_in
from tests.console.conftest import add_usage

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]
AXE = Path(__file__).resolve().parents[2] / "static" / "vendor" / "axe-core" / "axe.min.js"
BLOCKING = ("serious", "critical")
ANSWER = """## Result

The integral is **x²/2**; see [the docs](https://example.org/docs).

> A quoted line.

| Name | Value |
|------|-------|
| a    | 1     |

```python
def answer():
    return 42  # the answer
```

Inline `code` and math $x^2 + 1$.
"""
PAGES = {  # path -> the roles that open it
    "/": ["admin", "user", "viewer", "api_user"],
    "/chat/": ["admin", "user", "viewer", "api_user"],
    "/usage/": ["admin", "user", "viewer", "api_user"],
    "/keys/": ["admin", "user", "viewer", "api_user"],
    "/password/": ["user"],
    "/budgets/": ["admin", "user"],  # the user's is the console's 403 page
    "/training/": ["admin", "user"],  # the user's is the console's 403 page
    "/admin/": ["admin", "viewer"],  # the viewer's is the admin's 403 page
}
REFUSED = {("/budgets/", "user"), ("/training/", "user"), ("/admin/", "viewer")}
RUN_AXE = """async () => {
  const result = await axe.run(document, {resultTypes: ['violations']});
  return result.violations.filter(v => ['serious', 'critical'].includes(v.impact)).map(v => ({
    id: v.id, impact: v.impact, help: v.help,
    nodes: v.nodes.slice(0, 5).map(n => n.target.join(' ') + ': ' + (n.failureSummary || '').replace(/\\s+/g, ' '))}));
}"""


def seed_answered_conversation(user):
    """A pinned conversation whose answer has Markdown, code, a table and math, rated good."""
    from agents.models import Conversation, Message

    conversation = Conversation.objects.create(organization=user.organization, user=user, title="Integrals",
                                               agent="general", pinned=True)
    question = Message.objects.create(conversation=conversation, role="user", content="integrate x", agent="general")
    Message.objects.create(conversation=conversation, parent=question, role="assistant", content=ANSWER,
                           agent="general", status="complete", feedback=1, input_tokens=10, output_tokens=40)
    return conversation


def themed_page(browser, live, scheme: str, user=None):
    """A page of a fresh context with the system's colour scheme; the CSP is bypassed only so that the
    test can inject axe (the pages' own scripts run under it in every other test)."""
    context = browser.new_context(viewport={"width": 1280, "height": 860}, base_url=live.url, color_scheme=scheme,
                                  bypass_csp=True)
    context.set_default_timeout(30_000)
    page = context.new_page()
    if user is not None:
        sign_in(page, user.username)
    return page


def settle(page, path: str):
    """The page as a user sees it: the chat's conversation rendered, the usage charts drawn."""
    if path == "/chat/":
        page.wait_for_selector('#connection[data-state="open"]')
        page.locator("#conversation-list .conversation").first.click()
        page.wait_for_selector("#messages .msg.assistant .content .code-block .hljs")
        page.wait_for_selector("#messages .msg.assistant .katex")
    elif path == "/training/" and page.locator("#training").count():
        # a built version's details open, the lists loaded
        page.get_by_role("button", name="Versions of Answers").click()
        page.wait_for_selector("#version-list .version[data-state='done']")
        page.wait_for_selector("#set-body tr:has-text('No evaluation sets yet.')")
    elif path == "/usage/":
        page.wait_for_function("() => [...document.querySelectorAll('canvas[data-chart]')].every(c => Chart.getChart(c))")


def axe_violations(page) -> list[dict]:
    page.add_script_tag(path=str(AXE))
    return page.evaluate(RUN_AXE)


def report(found: dict) -> str:
    lines = []
    for where, violations in found.items():
        for v in violations:
            lines.append(f"{where}: [{v['impact']}] {v['id']}: {v['help']}")
            lines.extend(f"    {node}" for node in v["nodes"])
    return "\n".join(lines)


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_console_and_admin_pages_have_no_serious_axe_violations(browser, live, users, org, scheme, settings,
                                                                tmp_path):
    from accounts.actions.keys import create_api_key
    from accounts.actions.users import create_user
    from training.actions.builds import request_build, run_build
    from training.actions.consent import set_consent
    from training.models import Dataset

    for user in users.values():
        seed_answered_conversation(user)
        add_usage(user, 6)
        create_api_key(user, "laptop")
    settings.RELAY_TRAINING_DIR = tmp_path / "training"
    set_consent(org, enabled=True, actor=users["admin"])
    answers = Dataset.objects.create(organization=org, name="Answers")
    run_build(request_build(answers, actor=users["admin"], enqueue=False).pk)
    root = create_user("root", organization=org, role="admin", password="correct horse battery staple")
    root.is_staff = root.is_superuser = True
    root.save(update_fields=["is_staff", "is_superuser"])

    found = {}
    page = themed_page(browser, live, scheme)
    page.goto("/login/")
    found["anonymous /login/"] = axe_violations(page)
    page.context.close()
    for role, user in users.items():
        page = themed_page(browser, live, scheme, user)
        for path, roles in PAGES.items():
            if role not in roles:
                continue
            response = page.goto(path)
            assert response.status == (403 if (path, role) in REFUSED else 200), (role, path)
            assert page.evaluate("document.documentElement.dataset.theme") == "auto"
            settle(page, path)
            found[f"{role} {path}"] = axe_violations(page)
        page.context.close()
    page = themed_page(browser, live, scheme, root)
    page.goto("/admin/")
    found["superuser /admin/"] = axe_violations(page)
    page.context.close()

    found = {where: v for where, v in found.items() if v}
    assert not found, f"axe found serious or critical violations ({scheme}):\n" + report(found)
