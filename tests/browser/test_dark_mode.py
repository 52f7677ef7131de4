"""Dark mode in Chromium: the console follows the system until the user picks a theme in the top bar;
the choice is remembered (also by the admin, which shares it), applied before the first paint, and
the rendered Markdown, code and charts stay readable in dark."""

import re

import pytest

from tests.browser.conftest import screenshot
from tests.browser.test_accessibility import seed_answered_conversation, themed_page
from tests.console.conftest import add_usage

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]
LIGHT_BG, DARK_BG = "rgb(244, 246, 250)", "rgb(13, 21, 38)"  # --bg of static/css/relay.css
LIGHT_CARD, DARK_CARD = "rgb(255, 255, 255)", "rgb(19, 29, 51)"  # --card
# Before any page script: what the document says about the theme when <body> first exists (nothing is
# painted before that) and at DOMContentLoaded.
WATCH_FIRST_PAINT = """
window.__theme = {};
new MutationObserver((records, observer) => {
  if (!document.body) return;
  window.__theme.atBody = {attr: document.documentElement.dataset.theme || null,
                           bg: getComputedStyle(document.documentElement).getPropertyValue('--bg').trim()};
  observer.disconnect();
}).observe(document, {childList: true, subtree: true});
document.addEventListener('DOMContentLoaded', () => {
  window.__theme.atReady = document.documentElement.dataset.theme || null;
});
"""


def background(page) -> str:
    return page.evaluate("getComputedStyle(document.body).backgroundColor")


def toggle(page):
    return page.locator(".topbar").get_by_role("button", name=re.compile("^Colour theme"))


def luminance(rgb: str) -> float:
    channels = [int(c) / 255 for c in re.findall(r"\d+", rgb)[:3]]
    linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def contrast(fg: str, bg: str) -> float:
    a, b = sorted([luminance(fg), luminance(bg)], reverse=True)
    return (a + 0.05) / (b + 0.05)


def test_the_console_follows_the_system_until_the_user_picks(browser, live, users):
    for scheme, expected in (("light", LIGHT_BG), ("dark", DARK_BG)):
        page = themed_page(browser, live, scheme, users["user"])
        assert page.evaluate("document.documentElement.dataset.theme") == "auto"
        assert background(page) == expected, scheme
        assert "system" in toggle(page).get_attribute("aria-label")
        page.context.close()

    # The system is light: system -> dark -> light -> system, like the admin's own toggle.
    page = themed_page(browser, live, "light", users["admin"])
    toggle(page).click()
    assert page.evaluate("document.documentElement.dataset.theme") == "dark"
    assert background(page) == DARK_BG
    assert toggle(page).get_attribute("aria-label") == "Colour theme: dark (switch to light)"
    assert page.evaluate("localStorage.getItem('theme')") == "dark"
    page.reload()
    assert background(page) == DARK_BG
    page.goto("/keys/")
    assert background(page) == DARK_BG
    assert page.locator("main .card:visible").first.evaluate("e => getComputedStyle(e).backgroundColor") == DARK_CARD
    # The admin reads the same choice (Django's admin/js/theme.js: localStorage "theme").
    page.goto("/admin/")
    assert page.evaluate("document.documentElement.dataset.theme") == "dark"
    assert background(page) == DARK_BG
    page.locator(".topbar .theme-toggle").click()  # the admin's toggle: dark -> light
    page.goto("/")
    assert page.evaluate("document.documentElement.dataset.theme") == "light"
    assert background(page) == LIGHT_BG
    toggle(page).click()
    assert page.evaluate("document.documentElement.dataset.theme") == "auto"
    assert "system" in toggle(page).get_attribute("aria-label")
    # A system turning dark is followed at once while the choice is "system".
    page.emulate_media(color_scheme="dark")
    page.wait_for_function(f"() => getComputedStyle(document.body).backgroundColor === '{DARK_BG}'")


def test_the_theme_is_set_before_the_first_paint(browser, live, users):
    page = themed_page(browser, live, "light", users["user"])
    page.evaluate("localStorage.setItem('theme', 'dark')")
    page.add_init_script(WATCH_FIRST_PAINT)
    for path in ("/", "/chat/", "/usage/"):
        page.goto(path)
        assert page.evaluate("window.__theme") == {"atBody": {"attr": "dark", "bg": "#0d1526"}, "atReady": "dark"}, path


def test_markdown_code_and_charts_are_readable_in_dark(browser, live, users):
    user = users["user"]
    seed_answered_conversation(user)
    add_usage(user, 6)
    seen = {}
    for scheme in ("light", "dark"):
        page = themed_page(browser, live, scheme, user)
        page.goto("/chat/")
        page.wait_for_selector('#connection[data-state="open"]')
        page.locator("#conversation-list .conversation").first.click()
        answer = page.locator("#messages .msg.assistant").last
        answer.locator(".code-block .hljs-keyword").first.wait_for()
        answer.locator(".katex").first.wait_for()
        colours = answer.evaluate("""a => {
          const style = (selector, prop, root = a) => getComputedStyle(root.querySelector(selector))[prop];
          return {
            bubble: getComputedStyle(a).backgroundColor, text: getComputedStyle(a.querySelector('.content')).color,
            code: style('pre code.hljs', 'color'), codeBg: style('pre code.hljs', 'backgroundColor'),
            keyword: style('.hljs-keyword', 'color'), comment: style('.hljs-comment', 'color'),
            quote: style('blockquote', 'color'), th: style('th', 'backgroundColor'), link: style('a', 'color'),
            math: style('.katex', 'color'), pinIcon: style('.c-pin .i', 'backgroundColor', document),
          };
        }""")
        seen[scheme] = colours
        for fg, bg in (("text", "bubble"), ("quote", "bubble"), ("link", "bubble"), ("math", "bubble"),
                       ("code", "codeBg"), ("keyword", "codeBg"), ("comment", "codeBg")):
            assert contrast(colours[fg], colours[bg]) >= 4.5, (scheme, fg, bg, colours)
        if scheme == "dark":
            screenshot(page, "chat-dark")
        page.context.close()
    for name in ("bubble", "text", "code", "codeBg", "keyword", "quote", "th", "link", "pinIcon"):
        assert seen["light"][name] != seen["dark"][name], name

    # The usage charts' axes and grid take the theme's colours, and repaint when it changes.
    page = themed_page(browser, live, "dark", user)
    page.goto("/usage/")
    chart_colours = """() => { const c = Chart.getChart(document.querySelector('canvas[data-chart="daily"]'));
      return [c.options.scales.y.ticks.color, c.options.scales.y.grid.color]; }"""
    page.wait_for_function("() => Chart.getChart(document.querySelector('canvas[data-chart=\"daily\"]'))")
    assert page.evaluate(chart_colours) == ["#cfd5df", "rgba(228, 231, 236, .14)"]
    screenshot(page, "usage-dark", full_page=True)
    toggle(page).click()  # system (dark) -> light
    assert page.evaluate(chart_colours) == ["#475467", "rgba(16, 24, 40, .1)"]
