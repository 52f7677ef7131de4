"""A conversation's title from its first question, without a language model.

Greetings and polite filler ("hi", "can you please", "I was wondering if you could") say nothing
about the topic, so they go; what remains is cut at a sentence or phrase boundary, never
mid-word, and capitalised. Pure and cheap: it runs on the hot path when a run opens a conversation.
"""

from __future__ import annotations

import re

MAX_TITLE = 60
_GREETING = re.compile(
    r"^(?:(?:hi|hello|hey|hiya|howdy|greetings|yo|good (?:morning|afternoon|evening)|dear \w+)"
    r"(?:\s+(?:there|all|everyone|relay|assistant|bot))?[\s,.!:;-]*)+", re.IGNORECASE)
_FILLER = re.compile(
    r"^(?:(?:ok(?:ay)?|so|well|um+|uh+|please|pls|quick question|question|thanks?(?: you)?)[\s,.!:;-]+"
    r"|(?:can|could|would|will) you(?: please| kindly)?(?: help me)?(?: to)?\s+"
    r"|i (?:was wondering|wonder) (?:if|whether) you could\s+"
    r"|(?:i (?:want|need|would like|'d like)|i'd like) (?:you )?to\s+"
    r"|help me(?: to)?\s+"
    r"|tell me\s+(?=what|how|why|who|when|where|which|about)"
    r"|(?:can|could) (?:i|we) ask\s+(?:you\s+)?)", re.IGNORECASE)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s")
_PHRASE_BREAKS = (";", ":", " - ", " – ", " — ", ",", " because ", " so that ", " which ")
_TRAILING = re.compile(r"[\s,;:.\-–—]+$")
_FILLER_END = re.compile(r"\s*(?:,?\s*(?:please|pls|thanks?(?: you)?|thx))+[\s.!?]*$", re.IGNORECASE)


def _strip_filler(text: str) -> str:
    text = _GREETING.sub("", text)
    while True:
        stripped = _FILLER.sub("", text, count=1)
        if stripped == text:
            break
        text = stripped
    return _FILLER_END.sub("", text)


def _first_sentence(text: str) -> str:
    """The first sentence, keeping its question mark; a period is dropped (titles do not end in one)."""
    parts = _SENTENCE_END.split(text, maxsplit=1)
    sentence = parts[0].strip()
    return sentence[:-1] if sentence.endswith(".") and not sentence.endswith("..") else sentence


def _shorten(text: str) -> str:
    if len(text) <= MAX_TITLE:
        return text
    head = text[:MAX_TITLE]
    for mark in _PHRASE_BREAKS:  # the earliest phrase that still says enough
        cut = head.find(mark, MAX_TITLE // 3)
        if cut > 0:
            return _TRAILING.sub("", head[:cut])
    space = head.rfind(" ", MAX_TITLE // 2)
    return _TRAILING.sub("", head[:space] if space > 0 else head[:MAX_TITLE - 1]) + "…"


def summarise(question: str, *, fallback: str = "Image") -> str:
    """A title of at most MAX_TITLE characters for a conversation that starts with `question`."""
    text = " ".join(question.split())
    if not text:
        return fallback
    core = _strip_filler(text).strip(" ,.;:-") or text
    title = _shorten(_first_sentence(core) or core)
    if len(title) > MAX_TITLE:  # a single word longer than a title
        title = title[:MAX_TITLE - 1] + "…"
    return title[:1].upper() + title[1:]
