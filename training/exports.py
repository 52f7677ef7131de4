"""A built version's file in the formats training tools read, streamed line by line.

chat: {"messages": [...]} with OpenAI-format assistant `tool_calls` and `tool` messages.
preference: {"prompt", "chosen", "rejected"}: sibling answers to one question (a regenerated
answer; Message.parent) where one is preferred by feedback, then quality score; and answers to the
same question text, rated +1 and -1, in different conversations.
reward: {"prompt", "response", "score"}: every answer with a quality score.

Rows of one conversation are contiguous in the file (it is sorted by conversation), so sibling
pairs need one conversation in memory; cross-conversation pairs keep a few bytes per rated answer.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from itertools import groupby

from training import storage
from training.dedup import normalize
from training.models import DatasetVersion

FORMATS = ("chat", "preference", "reward")
SPLITS = ("all", "train", "validation")


def _line(obj: dict) -> str:
    return json.dumps(obj, ensure_ascii=False) + "\n"


def rows(version: DatasetVersion, split: str = "all") -> Iterator[dict]:
    """The version's canonical rows (what evaluations read as their cases), in file order."""
    with open(storage.path(version.file_name), encoding="utf-8") as source:
        for line in source:
            row = json.loads(line)
            if split == "all" or row["split"] == split:
                yield row


def _openai_messages(turns: list[dict]) -> list[dict]:
    messages = []
    for turn in turns:
        calls = turn.get("tool_calls") or []
        if turn["role"] == "assistant" and calls:
            messages.append({"role": "assistant", "content": None, "tool_calls": [
                {"id": call["id"], "type": "function",
                 "function": {"name": call["name"], "arguments": call["arguments"]}} for call in calls]})
            messages.extend({"role": "tool", "tool_call_id": call["id"], "content": call["output"]}
                            for call in calls)
        messages.append({"role": turn["role"], "content": turn["content"]})
    return messages


def chat(version: DatasetVersion, split: str = "all") -> Iterator[str]:
    for row in rows(version, split):
        yield _line({"messages": _openai_messages(row["messages"])})


def _prompt(row: dict) -> str:
    return next((t["content"] for t in reversed(row["messages"][:-1]) if t["role"] == "user"), "")


def _answer(row: dict) -> str:
    return row["messages"][-1]["content"]


def _preference(row: dict) -> tuple:
    score = row["quality_score"]
    return (row["feedback"] or 0, score if score is not None else float("-inf"))


def _pair(chosen: dict, rejected: dict) -> str:
    return _line({"prompt": _prompt(chosen), "chosen": _answer(chosen), "rejected": _answer(rejected),
                  "source": {"chosen": chosen["id"], "rejected": rejected["id"]}})


def preference(version: DatasetVersion, split: str = "all") -> Iterator[str]:
    rated: dict[bytes, dict[int, tuple[str, str]]] = {}  # question -> feedback -> (answer id, parent id)
    for _conversation, grouped in groupby(rows(version, split), key=lambda row: row["conversation"]):
        group = list(grouped)
        for _parent, siblings in groupby(sorted((r for r in group if r["parent"]), key=lambda r: r["parent"]),
                                        key=lambda r: r["parent"]):
            ranked = sorted(siblings, key=lambda r: (_preference(r), r["id"]), reverse=True)
            best = ranked[0]
            for other in ranked[1:]:
                if _preference(best) > _preference(other):
                    yield _pair(best, other)
        for row in group:
            if row["feedback"] in (1, -1):
                question = hashlib.blake2b(normalize(_prompt(row)).encode(), digest_size=16).digest()
                rated.setdefault(question, {}).setdefault(row["feedback"], (row["id"], row["parent"]))
    pairs = sorted((sides[1][0], sides[-1][0]) for sides in rated.values()
                   if 1 in sides and -1 in sides and sides[1][1] != sides[-1][1])  # siblings were paired above
    if not pairs:
        return
    needed = {answer for pair in pairs for answer in pair}
    found = {row["id"]: row for row in rows(version, split) if row["id"] in needed}
    for chosen, rejected in pairs:
        yield _pair(found[chosen], found[rejected])


def reward(version: DatasetVersion, split: str = "all") -> Iterator[str]:
    for row in rows(version, split):
        if row["quality_score"] is not None:
            yield _line({"prompt": _prompt(row), "response": _answer(row), "score": row["quality_score"]})


def lines(version: DatasetVersion, fmt: str, split: str = "all") -> Iterator[str]:
    return {"chat": chat, "preference": preference, "reward": reward}[fmt](version, split)
