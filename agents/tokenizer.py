"""The embedded engine's own offline tokenizer.

Relay must report token counts without downloading BPE vocabularies (tiktoken fetches its
files at run time, and the embedded mode has no network), so this is a regex pre-tokenizer
in the spirit of GPT's: its pieces and counts track cl100k-style tokenizers closely enough
for budgets, price estimates and chunking, and it is deterministic and dependency free.

Every character of the input belongs to exactly one piece, so ``"".join(split_tokens(t)) == t``
for any string, including emoji, control characters and lone surrogates.
"""

import json
import re

from agents import image_tokens

# Scripts written without spaces between words: a GPT tokenizer spends roughly one token per
# character on them, so they must not be swallowed into 6-letter "words".
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\uff66-\uff9f"

# Order matters: the first alternative that matches at a position wins.
_PIECE = re.compile(
    "|".join(
        [
            # English contractions stay separate tokens, as in GPT ("don" + "'t").
            r"'(?:[sdmt]|ll|ve|re)(?![^\W\d_])",
            # A word with its leading space; long words continue as further <=6-letter pieces,
            # which approximates how BPE splits rare or long words into sub-words.
            rf" ?[^\W\d_{_CJK}]{{1,6}}",
            # One CJK character per token.
            rf"[{_CJK}]",
            # Numbers in groups of at most three digits, like cl100k.
            r" ?\d{1,3}",
            # ASCII punctuation runs ("...", "?!", "==") merge, up to three at a time.
            r" ?[!-/:-@\[-`{-~]{1,3}",
            # Any other symbol: emoji, non-ASCII punctuation, control characters, combining
            # marks. Each code point is its own piece (BPE often spends even more on them).
            r" ?[^\s\w]",
            # Whitespace: a run keeps its last space for the following word, as GPT does.
            r"\s+(?!\S)",
            r"\s+",
            # Safety net so the pieces always cover the input, whatever the regex misses.
            r"[\s\S]",
        ]
    )
)

# OpenAI's accounting for chat messages: every message is framed by a few special tokens,
# and the reply is primed with three more ("<|start|>assistant<|message|>").
TOKENS_PER_MESSAGE = 4
TOKENS_PER_NAME = 1
TOKENS_REPLY_PRIMING = 3


def split_tokens(text: str) -> list[str]:
    """Split ``text`` into token-like pieces that concatenate back to exactly ``text``."""
    if not text:
        return []
    return _PIECE.findall(text)


def count_tokens(text: str) -> int:
    """Number of tokens in ``text`` (``len(split_tokens(text))`` without building the list)."""
    if not text:
        return 0
    count = 0
    for _ in _PIECE.finditer(text):
        count += 1
    return count


def _content_tokens(content) -> int:
    """Tokens of a message ``content``: a string, ``None``, or a list of OpenAI content parts."""
    if content is None:
        return 0
    if isinstance(content, str):
        return count_tokens(content)
    if isinstance(content, list):
        total = 0
        for part in content:
            if isinstance(part, str):
                total += count_tokens(part)
            elif isinstance(part, dict):
                if part.get("type") in ("image_url", "input_image", "image"):
                    total += image_tokens.count(part)  # from the image's size, as OpenAI counts it
                else:  # text, or an assistant's refusal
                    total += count_tokens(str(part.get("text") or part.get("refusal") or ""))
        return total
    return count_tokens(str(content))


def _tool_calls_tokens(tool_calls) -> int:
    total = 0
    for call in tool_calls or ():
        if not isinstance(call, dict):
            continue
        function = call.get("function") or {}
        if isinstance(function, dict):
            total += count_tokens(str(function.get("name") or ""))
            total += count_tokens(str(function.get("arguments") or ""))
    return total


def count_tool_tokens(tools: list[dict] | None) -> int:
    """Prompt tokens of the tool definitions sent beside the messages (the client's own, on /v1):
    the model reads them as part of the prompt, so they count like any other input."""
    if not tools:
        return 0
    return count_tokens(json.dumps(tools, separators=(",", ":"), ensure_ascii=False, default=str))


def count_message_tokens(messages: list[dict]) -> int:
    """Prompt tokens of an OpenAI-format chat, including the per-message framing overhead."""
    total = 0
    for message in messages or ():
        if not isinstance(message, dict):
            continue
        total += TOKENS_PER_MESSAGE
        total += count_tokens(str(message.get("role") or ""))
        total += _content_tokens(message.get("content"))
        if message.get("name"):
            total += TOKENS_PER_NAME + count_tokens(str(message["name"]))
        if message.get("tool_calls"):
            total += _tool_calls_tokens(message["tool_calls"])
        if message.get("tool_call_id"):
            total += count_tokens(str(message["tool_call_id"]))
    return total + TOKENS_REPLY_PRIMING
