"""Answers as sanitized Markdown in Chromium: stored XSS stays inert, Markdown, code and math render while
streaming, and a reloaded conversation renders the same way (static/js/render.js)."""

import pytest

from tests.browser.test_console import ask, last_answer, open_chat

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

# Before any page script: every CSP violation, uncaught error and dialog is recorded, and every DOM
# change in the messages is checked for markup the renderer must never produce. The CSP alone would
# stop an inline handler from running; these records also fail when the renderer's own controls go.
WATCH = """
window.__pwned = false;
window.__violations = [];
window.__unsafe = [];
window.__streamed = {katex: false, code: false, heading: false};
document.addEventListener('securitypolicyviolation', e => window.__violations.push(e.violatedDirective + ' ' + e.blockedURI));
const SAFE_HREF = /^(https?:|mailto:)/i;
function audit(root) {
  if (!(root instanceof Element)) return;
  for (const node of [root, ...root.querySelectorAll('*')]) {
    const tag = node.tagName.toLowerCase();
    if (['script', 'img', 'svg', 'iframe', 'object', 'embed', 'style', 'form', 'input'].includes(tag)
        && !node.closest('.katex')) window.__unsafe.push(tag);
    for (const attr of node.attributes) {
      if (attr.name.startsWith('on')) window.__unsafe.push(tag + ' ' + attr.name);
      if (['href', 'src', 'xlink:href', 'action'].includes(attr.name) && !SAFE_HREF.test(attr.value))
        window.__unsafe.push(tag + ' ' + attr.name + '=' + attr.value);
    }
  }
}
document.addEventListener('DOMContentLoaded', () => {
  const messages = document.getElementById('messages');
  if (!messages) return;
  new MutationObserver(records => {
    for (const r of records) r.addedNodes.forEach(n => audit(n.parentElement && n.parentElement.closest('.content') ? n : null));
    const answer = document.querySelector('#messages .msg.assistant:last-child[data-state="streaming"] .content');
    if (!answer) return;
    if (answer.querySelector('.katex')) window.__streamed.katex = true;
    if (answer.querySelector('.code-block pre code')) window.__streamed.code = true;
    if (answer.querySelector('h2')) window.__streamed.heading = true;
  }).observe(messages, {childList: true, subtree: true, characterData: true});
});
"""

PAYLOAD_CHUNKS = [
    "Split: <im", "g src=x one", "rror=alert(1)>", " done.\n\n",
    "[click](javascript:alert(2)) and [CLICK](JaVaScRiPt:window.__pwned=true)\n\n",
    "<script>window.__pwned = true; alert(3)</script>\n\n",
    "<svg onload=alert(4)><circle r=1></circle></svg>\n\n",
    '<a href="javascript:alert(5)">raw link</a> <img src=x onerror="window.__pwned=true">\n\n',
    "![pic](x onerror=alert(6)) $\\href{javascript:alert(7)}{math link}$ ",
    "<iframe src=javascript:alert(8)></iframe> <details open ontoggle=alert(9)>",
]
MARKDOWN = """## Plan

- first item
- second item

| Name | Value |
| --- | --- |
| alpha | 1 |

> A quoted line.

See [the docs](https://example.org/docs) or [mail](mailto:team@example.org).

```python
def answer():
    return 42
```

Prices: $5 and $6, or `echo $HOME $PATH`.

Done."""
MATRIX = "The matrix is\n\n$$\\begin{pmatrix}1 & 2 \\\\ 3 & 4\\end{pmatrix}$$\n\nand its trace is $a_1 + a_2 = 5$."


def chat_page(new_page, user, live):
    page = new_page(user)
    page.context.add_init_script(WATCH)
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=live.url)
    dialogs, errors = [], []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.on("pageerror", lambda e: errors.append(str(e)))
    open_chat(page)
    return page, dialogs, errors


def wait_complete(page):
    page.wait_for_selector('#messages .msg.assistant:last-child[data-state="complete"]', timeout=60_000)


def stored_answer(page) -> str:
    """The answer as the API returns it (the console renders; the server must not touch the text)."""
    conversation = page.locator("#conversation-list .conversation").first.get_attribute("data-id")
    detail = page.evaluate("id => fetch('/api/v1/conversations/' + id + '/').then(r => r.json())", conversation)
    return detail["messages"][-1]["content"]


def reload_conversation(page):
    page.reload()
    page.wait_for_selector('#connection[data-state="open"]')
    page.locator("#conversation-list .conversation").first.click()
    page.wait_for_selector("#messages .msg.assistant .content.md")


def test_streamed_xss_payloads_render_as_inert_text(new_page, users, live, fake_upstream, upstream_model):
    fake_upstream.configure(chunks=PAYLOAD_CHUNKS, tps=40)
    page, dialogs, errors = chat_page(new_page, users["user"], live)
    ask(page, "general", "show me the payloads")
    wait_complete(page)
    content = last_answer(page).locator(".content")
    text = content.inner_text()
    # Shown as the characters the model sent, including the tag assembled from three tokens.
    assert "<img src=x onerror=alert(1)>" in text
    assert "<script>window.__pwned = true; alert(3)</script>" in text
    assert "<svg onload=alert(4)>" in text
    assert content.locator("a").evaluate_all("els => els.map(a => a.getAttribute('href'))") == [None, None]
    assert stored_answer(page) == "".join(PAYLOAD_CHUNKS)
    reload_conversation(page)
    assert last_answer(page).locator(".content").inner_text() == text
    state = page.evaluate("({pwned: window.__pwned, violations: window.__violations, unsafe: window.__unsafe})")
    assert state == {"pwned": False, "violations": [], "unsafe": []}
    assert dialogs == [] and errors == []


def test_markdown_and_code_render_while_streaming_and_after_reload(new_page, users, live, fake_upstream,
                                                                  upstream_model):
    fake_upstream.configure(reply=MARKDOWN, tps=40)
    page, dialogs, errors = chat_page(new_page, users["user"], live)
    ask(page, "general", "make a plan")
    wait_complete(page)
    content = last_answer(page).locator(".content")
    assert content.locator("h2").inner_text() == "Plan"
    assert content.locator("ul > li").all_inner_texts() == ["first item", "second item"]
    assert content.locator("table th").all_text_contents() == ["Name", "Value"]
    assert content.locator("blockquote").inner_text() == "A quoted line."
    link = content.get_by_role("link", name="the docs")
    assert link.get_attribute("href") == "https://example.org/docs"
    assert link.get_attribute("target") == "_blank"
    assert link.get_attribute("rel") == "noopener noreferrer nofollow"
    assert content.get_by_role("link", name="mail").get_attribute("href") == "mailto:team@example.org"
    assert content.locator(".katex").count() == 0  # dollars in prose and in code are not math
    assert "$5 and $6" in content.inner_text() and content.locator("p code").inner_text() == "echo $HOME $PATH"
    code = content.locator(".code-block pre code")
    assert code.locator(".hljs-keyword").first.inner_text() == "def"  # highlighted, not just monospaced
    html = content.inner_html()
    copy = content.get_by_role("button", name="Copy code")
    copy.click()
    page.wait_for_function("() => document.querySelector('.code-copy').textContent === 'Copied'")
    assert page.evaluate("navigator.clipboard.readText()") == "def answer():\n    return 42\n"
    streamed = page.evaluate("window.__streamed")
    assert streamed["heading"] and streamed["code"], streamed  # rendered before the answer was complete
    reload_conversation(page)
    assert last_answer(page).locator(".content").inner_html() == html
    assert dialogs == [] and errors == [] and page.evaluate("window.__unsafe") == []


def test_math_agent_answer_typesets_with_katex_while_streaming(new_page, users, live):
    page, dialogs, errors = chat_page(new_page, users["user"], live)
    ask(page, "math", "integrate x^2 * sin(x)")
    wait_complete(page)
    content = last_answer(page).locator(".content")
    assert content.locator(".katex").count() >= 1
    assert "$" not in content.inner_text()  # every delimiter was consumed by typesetting
    assert page.evaluate("window.__streamed.katex")
    assert page.evaluate("window.__violations") == []  # KaTeX's CSS and fonts load under the CSP
    html = content.inner_html()
    reload_conversation(page)
    assert last_answer(page).locator(".content").inner_html() == html
    assert dialogs == [] and errors == []


def test_matrix_latex_keeps_its_row_breaks(new_page, users, live, fake_upstream, upstream_model):
    # `\\` would be eaten as a Markdown escape if math were not pulled out before parsing.
    fake_upstream.configure(reply=MATRIX, tps=40)
    page, dialogs, errors = chat_page(new_page, users["user"], live)
    ask(page, "general", "a matrix please")
    wait_complete(page)
    content = last_answer(page).locator(".content")
    assert content.locator(".katex-display math mtable mtr").count() == 2
    assert content.locator(".math-inline .katex annotation").text_content() == "a_1 + a_2 = 5"
    assert "$" not in content.inner_text()
    assert stored_answer(page) == MATRIX
    assert dialogs == [] and errors == []
