"""RAG answers people can read: clean snippets (no Markdown syntax) and each passage once."""

import pytest
from django.urls import reverse

from agents.actions.documents import upload_document
from agents.documents import search
from agents.snippets import clean, distinct, near_duplicate, snippet

TABLE = """# Pricing plans

| Plan | Price | Seats |
|------|------:|:-----:|
| Basic | $10 | 5 |
| Team | $50 | 25 |
"""


def test_a_table_becomes_readable_cells_without_pipes_or_rule_rows():
    text = clean(TABLE)
    assert "|" not in text and "---" not in text and "#" not in text
    assert "Pricing plans:" in text
    assert "Basic · $10 · 5." in text and "Team · $50 · 25." in text


def test_headings_lose_their_hashes_and_whitespace_collapses():
    assert clean("## Setup ##\n\n\nRun   `make run`\tand wait.\n") == "Setup: Run make run and wait."
    assert clean("Title\n=====\nbody") == "Title body"


def test_code_fences_go_and_their_code_stays():
    text = clean("Install:\n```bash\npip install relay\n```\nDone.")
    assert "```" not in text and "pip install relay" in text and "bash" not in text


def test_emphasis_links_and_quotes_are_plain_text():
    assert clean("> **Bold** and _it_ see [the docs](https://example.org/x).") == "Bold and _it_ see the docs."


def test_unicode_is_kept_and_normalized():
    assert clean("# Café ☕\n| naïve | 日本語 |") == "Café ☕: naïve · 日本語."
    assert clean("Cafe\u0301") == "Café"


def test_a_snippet_is_cut_at_a_word_with_an_ellipsis():
    text = "alpha beta gamma delta epsilon " * 20
    cut = snippet(text, 40)
    assert len(cut) <= 40 and cut.endswith("…")
    assert cut[:-1].split(" ")[-1] in {"alpha", "beta", "gamma", "delta", "epsilon"}
    assert snippet("short text", 40) == "short text"
    assert snippet("a" * 100, 10) == "a" * 9 + "…"  # one long word: cut inside it rather than nothing


def test_the_stored_text_is_not_changed(users):
    document = upload_document(users["user"], name="plans.md", data=TABLE.encode(), content_type="text/markdown")
    assert "|------|" in document.chunks.get().text


class P:
    def __init__(self, document_id, chunk_index, text):
        self.document_id, self.chunk_index, self.text = document_id, chunk_index, text


def test_repeats_are_dropped_same_chunk_same_text_and_overlapping_text():
    body = "Budgets stop a run when the spend of the period reaches the limit set by the admin of the team."
    passages = [P(1, 0, body), P(1, 0, body), P(2, 0, body), P(1, 1, body + " Alerts go out at eighty percent."),
                P(3, 0, "An entirely different passage about API keys and their scopes.")]
    kept = distinct(passages)
    assert [(p.document_id, p.chunk_index) for p in kept] == [(1, 0), (3, 0)]
    assert near_duplicate("# Budgets\n\n" + body, body)
    assert not near_duplicate(body, "API keys have scopes and an expiry date and may be revoked.")


@pytest.mark.django_db
def test_search_returns_a_document_uploaded_twice_once(users):
    data = ("Project Heron ships in April. " * 3 + "\n\n" + TABLE).encode()
    upload_document(users["user"], name="heron.md", data=data, content_type="text/markdown")
    upload_document(users["user"], name="heron-copy.md", data=data, content_type="text/markdown")
    passages = search(users["user"], "When does Project Heron ship?", api_key=None)
    assert len([p for p in passages if "Heron" in p.text]) == 1
    assert passages[0].document_title == "Pricing plans"


@pytest.mark.django_db
def test_the_rag_answer_quotes_each_passage_once_without_table_syntax(users, client_for):
    data = ("Project Heron ships in April.\n\n" + TABLE).encode()
    for name in ("heron.md", "heron-again.md"):
        upload_document(users["user"], name=name, data=data, content_type="text/markdown")
    client = client_for(users["user"])
    body = client.post(reverse("query"), {"query": "Heron plan price seats", "agent_type": "rag"}, format="json").json()
    answer = body["answer"]
    assert "|" not in answer and "---" not in answer and "# Pricing" not in answer
    assert "[1]" in answer and "<" not in answer  # plain [n], no HTML
    assert answer.count("Heron ships in April") == 1
    (call,) = [c for c in body["tool_calls"] if c.get("tool", c.get("name")) == "search_documents"]
    (passage,) = [p for p in call["data"]["passages"] if "Heron" in p["snippet"]]
    assert "Basic · $10 · 5." in passage["snippet"] and "|" not in passage["snippet"]
