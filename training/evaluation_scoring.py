"""Agreement of an answer with its reference, and the figures of a distribution (pure: no database).

Math answers are compared exactly after normalisation (whitespace, case, trailing zeros, simple
LaTeX), numerically when both sides parse as numbers; anything else gets SQuAD's token-level F1
(lower case, punctuation and the articles a/an/the removed, bag-of-words overlap).
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from decimal import Decimal, InvalidOperation
from fractions import Fraction

EXACT, F1 = "exact", "f1"
HISTOGRAM_BUCKETS = 10  # quality scores are 0..1: ten buckets of 0.1

_DELIMITERS = re.compile(r"\$\$|\$|\\\(|\\\)|\\\[|\\\]")
_FRAC = re.compile(r"\\[dt]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}")
_BOXED = re.compile(r"\\boxed\s*\{(.*)\}")
_COMMANDS = re.compile(r"\\(left|right|displaystyle|,|;|!|quad|qquad)")
_ANSWER_IS = re.compile(r"^(the\s+)?(final\s+)?answer\s*(is|:)\s*", re.IGNORECASE)
_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)(e[+-]?\d+)?$")
_MATHY = re.compile(r"^[\s\d+\-*/^().,=\\{}a-z_$]*$", re.IGNORECASE)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def _strip_zeros(match: re.Match) -> str:
    number = match.group(0)
    if "." in number:
        number = number.rstrip("0").rstrip(".")
    return number


def normalise_math(text: str) -> str:
    """The answer's canonical spelling: `\\frac{1}{2}` → `(1)/(2)`, `x ^ {2}` → `x^2`, `2.50` → `2.5`."""
    text = _ANSWER_IS.sub("", text.strip())
    text = _DELIMITERS.sub("", text)
    boxed = _BOXED.search(text)
    if boxed:
        text = boxed.group(1)
    for _ in range(3):  # nested fractions, innermost first
        text = _FRAC.sub(r"(\1)/(\2)", text)
    text = _COMMANDS.sub("", text).replace("\\cdot", "*").replace("\\times", "*")
    text = re.sub(r"\^\s*\{([^{}]*)\}", r"^\1", text)
    text = re.sub(r"\s+", "", text).lower().rstrip(".")
    text = re.sub(r"\((\d+)\)", r"\1", text)  # (1)/(2) → 1/2 once simple
    return re.sub(r"\d+\.\d+|\d+", _strip_zeros, text)


def as_number(text: str) -> Fraction | None:
    """The value of a plain number or a simple fraction a/b (after normalise_math), else None."""
    text = text.replace(",", "") if re.fullmatch(r"[+-]?\d{1,3}(,\d{3})+(\.\d+)?", text) else text
    parts = text.split("/")
    if len(parts) > 2 or not all(_NUMBER.match(part) for part in parts):
        return None
    try:
        values = [Fraction(Decimal(part)) for part in parts]
    except (InvalidOperation, ValueError):
        return None
    if len(values) == 2:
        return None if values[1] == 0 else values[0] / values[1]
    return values[0]


def is_math(reference: str) -> bool:
    """A short reference of digits, operators and LaTeX is a math answer; prose is scored by F1."""
    stripped = reference.strip()
    return bool(stripped) and len(stripped) <= 200 and bool(_MATHY.match(stripped)) and (
        any(ch.isdigit() for ch in stripped) or "\\" in stripped)


def math_match(answer: str, reference: str) -> bool:
    left, right = normalise_math(answer), normalise_math(reference)
    if left == right:
        return True
    a, b = as_number(left), as_number(right)
    if a is not None and b is not None:
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    return False


def _tokens(text: str) -> list[str]:
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    return _ARTICLES.sub(" ", text).split()


def token_f1(answer: str, reference: str) -> float:
    """SQuAD's F1: overlap of normalised word bags; both empty counts as agreement."""
    predicted, expected = _tokens(answer), _tokens(reference)
    if not predicted or not expected:
        return float(predicted == expected)
    common = sum((Counter(predicted) & Counter(expected)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall)


def agreement(answer: str, reference: str | None) -> tuple[float | None, str]:
    """(score, kind): 1.0/0.0 and "exact" for math references, token F1 and "f1" for text, (None, "") without."""
    if reference is None or not reference.strip():
        return None, ""
    if is_math(reference):
        # a math answer may carry words around it ("The answer is $x=2$"): the last line is the result
        last = answer.strip().splitlines()[-1] if answer.strip() else ""
        return float(math_match(answer, reference) or math_match(last, reference)), EXACT
    return token_f1(answer, reference), F1


def percentile(values: list[float], fraction: float) -> float | None:
    """Nearest-rank percentile of values (None when there are none)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def histogram(scores: list[float], buckets: int = HISTOGRAM_BUCKETS) -> list[dict]:
    """Counts of scores in [0, 1] per equal bucket; 1.0 falls in the last."""
    counts = [0] * buckets
    for score in scores:
        counts[min(buckets - 1, max(0, int(score * buckets)))] += 1
    return [{"from": round(i / buckets, 4), "to": round((i + 1) / buckets, 4), "count": count}
            for i, count in enumerate(counts)]
