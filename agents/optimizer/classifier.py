"""How strong a model a query needs: `simple`, `medium` or `complex`, from its text alone.

No network, no model: a handful of documented features, each a plain count, and a score.
The features (all computed by `features()`):

- `words`: length in words. Long prompts usually carry several requirements.
- `sentences`: sentences and clauses (`.`, `?`, `!`, `;`, and `:` before a list).
- `requirements`: how many separate things are asked for: list separators (commas, "and",
  "then", bullets and numbered lines) in the instruction part of the text.
- `complex_verbs`: distinct verbs of open-ended work — design, implement, compare, analyse,
  prove, plan, evaluate, propose, recommend, justify, derive, generalise, architect, refactor,
  optimise, critique, assess, investigate, migrate, debug, troubleshoot.
- `task_verbs`: distinct verbs that ask for produced text or code but not open-ended reasoning —
  write, explain, summarise, describe, draft, solve, integrate, differentiate, simplify.
- `reasoning_markers`: phrases that demand reasoning beyond recall — trade-offs, step by step,
  why, justify, at least N, each/every/all of, risks, failure modes, edge cases, complexity,
  by induction, stakeholders, second-order, in depth.
- `code_lines`: lines that look like code (fences, def/class/import, braces, assignments).
  A one-line expression (`print(2 + 3)`) is a lookup; a program is work.
- `symbolic_math`: calculus, equations with unknowns, proofs, matrices — as opposed to
  `arithmetic_only`: a query made of numbers and operators around a short instruction.
- `lookup_opener`: starts like a factual lookup or a one-step transformation ("what is",
  "who", "which", "define", "convert", "translate", "spell", "compute", "how many", ...).

Score = 3 per complex verb + 2 per task verb + 2 per reasoning marker + 2 for symbolic math +
1 per requirement beyond the first + 1 per 15 words beyond 15 + 1 per sentence beyond the first
+ 2 for a program (3+ code lines). A query is `simple` only when its score is at most 1 and it is
short (at most 30 words) — routing sends only those to a cheaper model, so the rule is
deliberately strict: a false "simple" costs quality, a false "complex" only money. A score of
7 or more, or any complex verb together with two requirements, is `complex`; the rest `medium`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SIMPLE, MEDIUM, COMPLEX = "simple", "medium", "complex"

# Word stems (matched at a word start) so that inflections count too: analyse/analyze/analysis.
_COMPLEX_VERBS = (
    "design", "implement", "compar", "analy", "prove", "proof", "plan", "evaluat", "propos", "recommend",
    "justif", "deriv", "generali", "architect", "refactor", "optimi", "critiqu", "assess", "investigat",
    "migrat", "debug", "troubleshoot", "formali", "benchmark",
)
_TASK_VERBS = (
    "write", "explain", "summari", "describe", "draft", "solve", "integrat", "differentiat", "simplif",
    "outline", "discuss", "review", "rewrite", "classif", "estimat", "calculate the derivative",
)
_REASONING = (
    r"trade-?offs?", r"step[- ]by[- ]step", r"\bwhy\b", r"at least \w+", r"\beach\b", r"\bevery\b", r"\ball\b",
    r"\brisks?\b", r"failure modes?", r"edge cases?", r"complexity", r"induction", r"stakeholders?",
    r"second-order", r"in depth", r"pros and cons", r"consider(?:ing)?", r"scalab", r"consistency",
    r"contradict", r"implications?",
)
_LOOKUP_OPENERS = (
    "what is", "what's", "what are", "who ", "which ", "when ", "where ", "define", "convert", "translate",
    "spell", "compute", "calculate", "how many", "how much", "name ", "list the", "is ", "are ", "print(",
)
_SYMBOLIC = re.compile(
    r"\b(?:integra\w*|derivativ\w*|differentia\w*|limit of|matri(?:x|ces)|eigen\w*|theorem|lemma|proof|prove"
    r"|induction|equation|solve)\b|[a-z]\*\*\d|\bd/d[a-z]\b|∫|∑", re.I)
_CODE_LINE = re.compile(r"^\s*(?:```|def |class |import |from \w+ import|for .+:|while .+:|if .+:|return\b|"
                        r"[A-Za-z_][\w.]*\s*=[^=]|.*[{};]\s*$)")
_ARITHMETIC = re.compile(r"^[\d\s.,+\-*/^%()=x×÷]+$")
_WORD = re.compile(r"[A-Za-z][A-Za-z'-]*|\d+(?:\.\d+)?")
_SENTENCE_END = re.compile(r"[.?!;](?:\s|$)|:\s")
_SEPARATORS = re.compile(r"(?<!\d),(?!\d)|\band\b|\bthen\b|\bplus\b|^\s*(?:[-*•]|\d+[.)])\s", re.I | re.M)


@dataclass(frozen=True)
class Classification:
    label: str
    score: int
    features: dict


def _stems(text: str, stems: tuple[str, ...]) -> int:
    return sum(1 for stem in stems if re.search(r"\b" + re.escape(stem), text))


def features(query: str) -> dict:
    text = query.strip()
    lower = text.lower()
    words = _WORD.findall(text)
    code_lines = sum(1 for line in text.splitlines() if _CODE_LINE.match(line))
    # Numbers and operators around a short instruction ("Compute 12 * 7.") are arithmetic.
    stripped = re.sub(r"^[A-Za-z ]{0,30}?(?=[\d(])|[.?!]$", "", text).strip()
    return {
        "words": len(words),
        "sentences": max(1, len(_SENTENCE_END.findall(text + " "))),
        "requirements": 1 + len(_SEPARATORS.findall(text)),
        "complex_verbs": _stems(lower, _COMPLEX_VERBS),
        "task_verbs": _stems(lower, _TASK_VERBS),
        "reasoning_markers": sum(1 for pattern in _REASONING if re.search(pattern, lower)),
        "code_lines": code_lines,
        "symbolic_math": bool(_SYMBOLIC.search(text)),
        "arithmetic_only": bool(stripped) and bool(_ARITHMETIC.match(stripped)),
        "lookup_opener": lower.startswith(_LOOKUP_OPENERS),
    }


def score(f: dict) -> int:
    points = 3 * f["complex_verbs"] + 2 * f["task_verbs"] + 2 * f["reasoning_markers"]
    if f["symbolic_math"] and not f["arithmetic_only"]:
        points += 2
    points += max(0, f["requirements"] - 1)
    points += max(0, f["words"] - 15) // 15
    points += max(0, f["sentences"] - 1)
    points += 2 if f["code_lines"] >= 3 else 0
    return int(points)


def classify(query: str) -> Classification:
    f = features(query)
    points = score(f)
    if points >= 7 or (f["complex_verbs"] and f["requirements"] >= 3):
        label = COMPLEX
    elif points <= 1 and f["words"] <= 30 and not f["complex_verbs"] and not f["task_verbs"]:
        label = SIMPLE
    else:
        label = MEDIUM
    return Classification(label, points, f)
