"""Math questions in words ("integrate x^2 from 0 to 1", "solve x+y=3, x-y=1") → parse jobs.

Recognises the operation and its parts (variable, bounds, limit point, series order), then hands
each expression to the whitelist parser (agents/tools/math_parse.py); nothing here evaluates.
"""
from __future__ import annotations

import re

from agents.tools.math_parse import MathError, normalise_text, to_ir

_FILLER = re.compile(r"^(?:please|pls|can\s+you|could\s+you|would\s+you|what\s+is|what's|whats|what\s+are|"
                     r"how\s+much\s+is|compute|calculate|find|determine|work\s+out|tell\s+me|give\s+me|show\s+me|"
                     r"i\s+need|help\s+me|the)\b\s*", re.I)
_END = r"(?:\b|(?=[(\[])|(?<=:))\s*"
_OPS = [(op, re.compile(rf"^(?:{pat}){_END}", re.I)) for op, pat in [
    ("series", r"(?:(?:taylor|maclaurin|power)\s+)?series\s+(?:of|for)|(?:taylor|maclaurin)\s+(?:expansion|series)"
               r"(?:\s+(?:of|for))?"),
    ("integrate", r"(?:definite\s+|indefinite\s+)?(?:integrate|integral\s+of|integral|"
                  r"anti-?derivatives?(?:\s+of)?|primitive\s+of)"),
    ("differentiate", r"(?:(?P<nth>second|third|2nd|3rd)\s+)?(?:differentiate|derivative\s+of|derivative|diff|"
                      r"d/d(?P<dvar>[a-z])(?:\s+of)?)"),
    ("solve", r"solve(?:\s+for\s+(?P<svar>[a-z])\s*:?)?|(?:roots|zeros|zeroes|solutions?)\s+(?:of|to)|"
              r"zero\s+of"),
    ("simplify", r"simplify|simplification\s+of|reduce"),
    ("expand", r"expand|expansion\s+of"),
    ("factor", r"factor(?:ise|ize)?|(?:prime\s+)?factori[sz]ation\s+of"),
    ("limit", r"limit\s+of|limit|lim"),
    ("matrix", r"(?P<mop>determinant|det|inverse|inv|transpose|eigenvalues|rank|trace)(?:\s+of)?"),
    ("evaluate", r"evaluate|value\s+of"),
]]
_WRT = re.compile(r"[\s,]+(?:with\s+respect\s+to|wrt|w\.r\.t\.?|in|for)\s+([A-Za-z])$", re.I)
_DX = re.compile(r"\s*\bd([a-z])$")
_BOUNDS = re.compile(r"[\s,]+from\s+(.+?)\s+to\s+(.+)$", re.I)
_LIMIT = re.compile(r"^(?P<e>.+?)\s*(?:,\s*|\s+(?:as|when|where)\s+)(?P<v>[A-Za-z])\s*"
                    r"(?:->|approaches|tends\s+to|goes\s+to|to)\s*(?P<p>.+)$", re.I)
_LIMIT_PREFIX = re.compile(r"^(?P<v>[A-Za-z])\s*->\s*(?P<p>\S+)\s+(?P<e>.+)$")
_ORDER = re.compile(r"[\s,]+(?:(?:up\s+)?to\s+)?(?:order|degree)\s+(\d{1,2})$", re.I)
_AROUND = re.compile(r"[\s,]+(?:around|about|at|near)\s+(?:([A-Za-z])\s*=\s*)?(.+)$", re.I)
_MOP = {"det": "determinant", "inv": "inverse"}
# Operators in words; applied before the bounds ("from 0 to 1") are read, so "to the power of" goes first.
_SPOKEN = [(re.compile(rf"\s*\b(?:{words})\b\s*", re.I), symbol) for words, symbol in [
    (r"to\s+the\s+power\s+of|to\s+the\s+power|raised\s+to(?:\s+the\s+power\s+of)?", "^"),
    (r"plus", "+"), (r"minus", "-"), (r"times|multiplied\s+by", "*"), (r"divided\s+by|over", "/"),
    (r"mod|modulo", " % "), (r"squared", "^2 "), (r"cubed", "^3 "), (r"square\s+root\s+of", " sqrt "),
]]
_PERCENT_OF = re.compile(r"^(?P<p>.+?)\s*(?:%|percent|per\s+cent)\s+of\s+(?P<of>.+)$", re.I)
_WHAT_PERCENT = re.compile(r"^(?:(?P<a>.+?)\s+is\s+)?what\s+(?:percent|percentage|%)\s+(?:of\s+(?P<b>.+?)"
                           r"(?:\s+is\s+(?P<a2>.+))?|is\s+(?P<a3>.+?)\s+of\s+(?P<b3>.+))$", re.I)
_PERCENT_END = re.compile(r"^(?P<p>.+?)\s*(?:%|percent|per\s+cent)$", re.I)


def _split_top(text: str, sep: str) -> list[str]:
    parts, depth, cur = [], 0, []
    for ch in text:
        depth += {"(": 1, "[": 1, ")": -1, "]": -1}.get(ch, 0)
        if ch == sep and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    return parts + ["".join(cur)]


def _strip(rx: re.Pattern, text: str):
    m = rx.search(text)
    return (text[:m.start()].strip(), m) if m else (text, None)


def parse_query(query) -> dict:
    """Natural-ish question -> job dict: op, parsed expression(s) as IR and options."""
    text = normalise_text(query).rstrip("?. ") or "?"
    text = text.replace("==", "=")
    while (m := _FILLER.match(text)) and m.end():
        text = text[m.end():]
    for rx, symbol in _SPOKEN:
        text = rx.sub(symbol, text).strip()
    job: dict = {"op": "evaluate", "var": None}
    for op, rx in _OPS:
        if m := rx.match(text):
            job["op"], text = op, text[m.end():].strip()
            groups = m.groupdict()
            job["var"] = groups.get("dvar") or groups.get("svar")
            job["n"] = {"second": 2, "2nd": 2, "third": 3, "3rd": 3}.get((groups.get("nth") or "").lower(), 1)
            job["mop"] = _MOP.get((groups.get("mop") or "").lower(), (groups.get("mop") or "").lower())
            break
    op = job["op"]
    if op == "evaluate" and (percent := _percentage(text, job)):
        job["expr"] = to_ir(percent)
        return job
    # SymPy call style: integrate(x^2, x) / limit(sin(x)/x, x, 0)
    args = _split_top(text[1:-1], ",") if text.startswith("(") and text.endswith(")") else [text]
    if len(args) > 1 and _split_top(text, ",") == [text] and op != "solve":
        text = args[0]
        if re.fullmatch(r"\s*[A-Za-z]\s*", args[1]):
            job["var"] = args[1].strip()
        if len(args) > 2 and op in ("limit", "series"):
            job["point"] = to_ir(args[2])
    if op in ("integrate", "differentiate", "series", "solve"):
        text, m = _strip(_WRT, text)
        job["var"] = m.group(1) if m else job["var"]
    if op == "integrate":
        for _ in range(2):
            text, m = _strip(_DX, text)
            job["var"] = m.group(1) if m else job["var"]
            text, b = _strip(_BOUNDS, text)
            if b:
                job["bounds"] = (to_ir(b.group(1)), to_ir(b.group(2)))
    elif op == "limit" and "point" not in job:
        m = _LIMIT.match(text) or _LIMIT_PREFIX.match(text)
        if not m:
            raise MathError("For a limit, say where the variable goes, e.g. 'limit of sin(x)/x as x -> 0'.")
        text, job["var"], point = m.group("e"), m.group("v"), m.group("p").strip()
        point, side = _strip(re.compile(r"\s+from\s+(?:the\s+)?(left|right|below|above)$", re.I), point)
        job["dir"] = {"left": "-", "below": "-", "right": "+", "above": "+"}[side.group(1).lower()] if side else "+-"
        if point[-1:] in "+-" and len(point) > 1:
            job["dir"], point = point[-1], point[:-1]
        job["point"] = to_ir(point)
    elif op == "series":
        job["order"] = 6
        for _ in range(2):
            text, m = _strip(_ORDER, text)
            job["order"] = int(m.group(1)) if m else job["order"]
            text, m = _strip(_AROUND, text)
            if m:
                job["var"] = m.group(1) or job["var"]
                job["point"] = to_ir(m.group(2))
        if not 1 <= job["order"] <= 30:
            raise MathError("The series order must be between 1 and 30.")
    elif op == "evaluate":
        text = re.sub(r"^(.+?)\s+factorial$", r"factorial(\1)", text, flags=re.I)
        text = re.sub(r"^factorial\s+of\s+(.+)$", r"factorial(\1)", text, flags=re.I)
        text = re.sub(r"^(?:square\s+)?root\s+of\s+(.+)$", r"sqrt(\1)", text, flags=re.I)
    if "=" in text and op in ("evaluate", "solve"):
        job["op"] = op = "solve"
    if op == "solve":
        parts = [p for chunk in _split_top(text, ",") for p in re.split(r"\s+and\s+", chunk, flags=re.I)]
        eqs = []
        for part in parts:
            sides = part.split("=")
            if len(sides) > 2:
                raise MathError("An equation can have only one '='.")
            eqs.append((to_ir(sides[0]), to_ir(sides[1]) if len(sides) == 2 else ("int", 0)))
        if len(eqs) > 6:
            raise MathError("I can solve systems of at most 6 equations.")
        job["equations"] = eqs
    else:
        if "=" in text:
            raise MathError(f"'=' only makes sense in equations to solve, not with {op}.")
        job["expr"] = to_ir(text)
    return job


def _percentage(text: str, job: dict) -> str | None:
    """'15% of 240', '36 is what percent of 240', '50%' -> an expression; job gets how to say it."""
    if m := _WHAT_PERCENT.match(text):
        part, whole = m.group("a") or m.group("a2") or m.group("a3"), m.group("b") or m.group("b3")
        if not part:
            raise MathError("Say which part, e.g. '36 is what percent of 240'.")
        job["label"], job["unit"] = f"{part.strip()} as a percentage of {whole.strip()}", "%"
        return f"({part})/({whole})*100"
    if m := _PERCENT_OF.match(text):
        job["label"] = f"{m.group('p').strip()}% of {m.group('of').strip()}"
        return f"({m.group('p')})/100*({m.group('of')})"
    if m := _PERCENT_END.match(text):
        job["label"] = f"{m.group('p').strip()}%"
        return f"({m.group('p')})/100"
    return None
