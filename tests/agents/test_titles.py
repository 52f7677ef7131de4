"""Conversation titles summarise the first question (agents.titles): no greeting, no filler, ≤ 60 chars."""

import pytest

from agents.titles import MAX_TITLE, summarise


@pytest.mark.parametrize("question, title", [
    ("Hi there! Can you please integrate x^2 sin x for me?", "Integrate x^2 sin x for me?"),
    ("hello", "Hello"),  # nothing but a greeting: the greeting is the topic
    ("solve x^2-5x+6=0", "Solve x^2-5x+6=0"),
    ("what is 15% of 240", "What is 15% of 240"),
    ("ok so tell me what is the capital of France. Also Spain.", "What is the capital of France"),
    ("Good morning, could you help me to write a limerick about budgets, please", "Write a limerick about budgets"),
    ("I was wondering if you could explain ledgers", "Explain ledgers"),
    ("integrate x^2 please", "Integrate x^2"),
    ("Привет, как дела?", "Привет, как дела?"),
    ("  \n\t ", "Image"),
    ("hey\n\nwhat   is\tRAG?", "What is RAG?"),
])
def test_titles(question, title):
    assert summarise(question) == title


def test_long_questions_are_cut_at_a_phrase_or_word_boundary():
    title = summarise("Explain how the budget ledger reserves the worst case before a stream starts, and why "
                      "it settles after the stream ends")
    assert len(title) <= MAX_TITLE and title.endswith("…") and not title.endswith(" …")
    assert title == "Explain how the budget ledger reserves the worst case…"
    phrase = summarise("How do I configure fallbacks for my model deployment, when the upstream times out often")
    assert phrase == "How do I configure fallbacks for my model deployment"
    assert len(summarise("a" * 500)) == MAX_TITLE
    assert all(len(summarise(q)) <= MAX_TITLE for q in ["word " * 40, "x" * 61, "é" * 100 + " y"])
