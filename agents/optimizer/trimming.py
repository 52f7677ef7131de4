"""Context trimming: long conversations send only as much recent history as a token budget allows.

System messages are always kept (they carry the instructions), as is the latest message (the
question being answered). Older turns are dropped oldest first until the rest fits. A kept
window never starts in the middle of an exchange: it starts at a user message, so an assistant
tool call is never separated from its tool results.
"""

from __future__ import annotations

from agents.tokenizer import count_message_tokens


def trim_messages(messages: list[dict], budget: int, *, keep_last: bool = True) -> list[dict]:
    """`messages` with the oldest non-system turns dropped so that the whole fits in `budget` tokens.

    keep_last: the last message is the question itself (OpenAI-style message lists) and always
    stays; a history without the question passes False. Returns the input list when it fits.
    """
    if budget <= 0 or count_message_tokens(messages) <= budget:
        return messages
    fixed = [i for i, m in enumerate(messages) if m.get("role") in ("system", "developer")]
    if keep_last and messages:
        fixed.append(len(messages) - 1)
    fixed_set = set(fixed)
    used = count_message_tokens([messages[i] for i in fixed_set])
    kept: set[int] = set()
    window: set[int] = set()
    for index in range(len(messages) - 1, -1, -1):  # newest first
        if index in fixed_set:
            continue
        cost = count_message_tokens([messages[index]]) - count_message_tokens([])
        if used + cost > budget:
            break
        used += cost
        window.add(index)
        if messages[index].get("role") == "user":
            kept |= window  # a complete exchange, from a user turn on
            window = set()
    return [m for i, m in enumerate(messages) if i in fixed_set or i in kept]


def trim_history(history: list[dict], budget: int) -> list[dict]:
    """A runner history (earlier turns, without the question) trimmed to `budget` tokens."""
    return trim_messages(history, budget, keep_last=False)
