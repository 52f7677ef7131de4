"""One conversation's messages turned into canonical training rows (pure: no database, no I/O).

A row is one selected answer with the branch of the conversation that led to it (Message.parent),
redacted, as one line of canonical JSON: keys sorted, no spaces, so the same data always gives
the same bytes and the version's sha256 is reproducible.
"""

from __future__ import annotations

import json
from collections import Counter

from training.redaction import redact

FIELDS = ("id", "parent_id", "role", "content", "tool_calls", "agent", "model", "quality_score", "feedback",
          "status", "selected")


def canonical(row: dict) -> str:
    return json.dumps(row, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _redacted(value, counts: Counter):
    """value with each string in it redacted before it is encoded: once encoded, an escape (`\\n`)
    glues its letter to the secret after it, and a redaction could cut an escape in half."""
    if isinstance(value, str):
        return redact(value, counts)
    if isinstance(value, list):
        return [_redacted(item, counts) for item in value]
    if isinstance(value, dict):
        return {redact(str(key), counts): _redacted(item, counts) for key, item in value.items()}
    return value


def _encoded(value, counts: Counter) -> str:
    """A tool call's arguments or output as redacted text; JSON given as text is redacted inside its strings."""
    if value is None:
        return ""
    if isinstance(value, str):
        try:
            parsed = json.loads(value)
        except ValueError:
            return redact(value, counts)
        if not isinstance(parsed, dict | list):
            return redact(value, counts)
        value = parsed
    return json.dumps(_redacted(value, counts), sort_keys=True, separators=(",", ":"))


def _tool_calls(message: dict, counts: Counter) -> list[dict]:
    calls = []
    for index, call in enumerate(message["tool_calls"] or []):
        if not isinstance(call, dict):
            continue
        call_id = str(call.get("call_id") or f"call_{str(message['id'])[:8]}_{index}")
        calls.append({"id": call_id, "name": str(call.get("name") or call.get("tool") or "tool"),
                      "arguments": _encoded(call.get("input", {}), counts),
                      "output": _encoded(call.get("output", ""), counts), "ok": bool(call.get("ok", True))})
    return calls


def _turn(message: dict, counts: Counter) -> dict:
    turn = {"role": message["role"], "content": redact(message["content"], counts)}
    if message["role"] == "assistant":
        turn["tool_calls"] = _tool_calls(message, counts)
    return turn


def _branch(messages: dict, answer: dict) -> list[dict]:
    """The answer's ancestors, root first, then the answer (a broken or cyclic parent chain stops there)."""
    path, seen, current = [], set(), answer
    while current is not None and current["id"] not in seen:
        seen.add(current["id"])
        path.append(current)
        current = messages.get(current["parent_id"])
    return path[::-1]


def conversation_rows(conversation_id, messages: list[dict], split: str, counts: Counter):
    """(row, dedup text) for each selected answer of one conversation, ordered by the answer's id."""
    by_id = {message["id"]: message for message in messages}
    for answer in sorted((m for m in messages if m["selected"]), key=lambda m: str(m["id"])):
        turns = [_turn(message, counts) for message in _branch(by_id, answer)]
        question = next((t["content"] for t in reversed(turns[:-1]) if t["role"] == "user"), "")
        row = {"id": str(answer["id"]), "conversation": str(conversation_id),
               "parent": str(answer["parent_id"]) if answer["parent_id"] else None, "split": split,
               "agent": answer["agent"], "model": answer["model"], "status": answer["status"],
               "quality_score": answer["quality_score"], "feedback": answer["feedback"], "messages": turns}
        yield row, question + "\n" + turns[-1]["content"]
