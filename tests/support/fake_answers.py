"""How the fake upstream reads a request and shapes its answer: text of content parts, the
per-request magic (``[[fake: ttft=0.2]]``), word tokens, and tool calls cut at ``max_tokens``.
Pure functions, kept apart from the server in tests/support/fake_upstream.py."""

from __future__ import annotations

import json
import re

MAGIC_RE = re.compile(r"\[\[fake:([^\]]*)\]\]")


def _text_of(content) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: keep the text ones
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def _parse_magic(text: str) -> dict:
    out: dict = {}
    for m in MAGIC_RE.finditer(text):
        for pair in m.group(1).split():
            key, _, raw = pair.partition("=")
            try:
                out[key] = json.loads(raw)
            except ValueError:
                out[key] = raw
    return out


def _tokens(text: str) -> list[str]:
    # Word tokens carrying their leading whitespace, like BPE, so they concatenate back exactly.
    return re.findall(r"\s*\S+", text)


def _calls_within(calls: list[dict], limit: int) -> tuple[list[dict], bool]:
    """The calls as a model writes them when max_tokens ends: the arguments cut short, later calls unwritten."""
    kept, left = [], limit
    for call in calls:
        cost = len(_tokens(call["name"] + " " + call["arguments"]))
        if cost <= left:
            kept.append(call)
            left -= cost
            continue
        room = max(0, left - len(_tokens(call["name"] + " ")))
        kept.append({**call, "arguments": "".join(_tokens(call["arguments"])[:room])})
        return kept, True
    return kept, False
