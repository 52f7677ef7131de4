"""Passages as people read them: a snippet cleaned of Markdown syntax, and one copy of each passage.

Presentation only: the stored document text is never changed. A snippet has no table pipes or
`|---|` rows, no heading hashes, no code fences, collapsed whitespace, and is cut at a word
boundary with an ellipsis. Near-duplicates (overlapping chunks, a document uploaded twice) are
told apart by their words, so the same passage is quoted and numbered once.
"""

from __future__ import annotations

import re
import unicodedata

_FENCE = re.compile(r"^\s*(```|~~~)[^\n]*$", re.MULTILINE)
_TABLE_RULE = re.compile(r"^\s*\|?\s*:?-{2,}:?\s*(\|\s*:?-{2,}:?\s*)*\|?\s*$", re.MULTILINE)
_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.*?)\s*#*\s*$", re.MULTILINE)
_SETEXT = re.compile(r"^\s*(=+|-{3,})\s*$", re.MULTILINE)
_EMPHASIS = re.compile(r"(\*\*|__)(.+?)\1")
_LINK = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")
_QUOTE_MARK = re.compile(r"^\s*>\s?", re.MULTILINE)
_WORDS = re.compile(r"[^\W_]+", re.UNICODE)


def _table_row(line: str) -> str:
    """'| a | b |' -> 'a · b' (cells kept, pipes gone)."""
    stripped = line.strip()
    if stripped.count("|") < 1 or not (stripped.startswith("|") or stripped.endswith("|") or " | " in stripped):
        return line
    cells = [cell.strip() for cell in stripped.strip("|").split("|")]
    return " · ".join(cell for cell in cells if cell) + "."


def clean(text: str) -> str:
    """The text without Markdown block syntax, whitespace collapsed (no length limit)."""
    text = unicodedata.normalize("NFC", text or "")
    text = _FENCE.sub("", text)
    text = _TABLE_RULE.sub("", text)
    text = _HEADING.sub(lambda m: m.group(1) + ":", text)
    text = _SETEXT.sub("", text)
    text = "\n".join(_table_row(line) for line in text.splitlines())
    text = _LINK.sub(r"\1", text)
    text = _EMPHASIS.sub(r"\2", text)
    text = _QUOTE_MARK.sub("", text)
    text = text.replace("`", "")
    text = " ".join(text.split())
    return text.replace(":.", ":").replace("..", ".")


def snippet(text: str, limit: int = 300) -> str:
    """A clean excerpt of at most `limit` characters, cut at a word boundary with an ellipsis."""
    text = clean(text)
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    if " " in cut and not text[limit - 1].isspace():
        cut = cut.rsplit(" ", 1)[0]
    return cut.rstrip(" ,;:·-") + "…"


def _shingles(text: str) -> set[tuple[str, ...]]:
    words = [w.casefold() for w in _WORDS.findall(clean(text))]
    if len(words) < 3:
        return {tuple(words)}
    return {tuple(words[i:i + 3]) for i in range(len(words) - 2)}


def near_duplicate(first: str, second: str, threshold: float = 0.8) -> bool:
    """Same words, or most of the shorter one's word triples inside the other (overlapping chunks)."""
    a, b = _shingles(first), _shingles(second)
    if not a or not b:
        return a == b
    return len(a & b) / min(len(a), len(b)) >= threshold


def distinct(passages, key=lambda p: p.text, ident=lambda p: (p.document_id, p.chunk_index)) -> list:
    """The passages in order, each passage once: a repeat of an earlier one (same chunk, or
    near-identical text) is dropped."""
    kept, seen = [], set()
    for passage in passages:
        if ident(passage) in seen or any(near_duplicate(key(passage), key(other)) for other in kept):
            continue
        seen.add(ident(passage))
        kept.append(passage)
    return kept
