"""The math tool's lexer: typed text -> explicit Python-syntax source for the whitelist parser.

People write `x^2 sin x`, `2x`, `sin^2 x`, `xe^x` and `5!`; the parser (math_parse.py) reads only
explicit syntax, so the lexer puts in the `*`, `**`, parentheses and factorial() they left out.
It never evaluates anything: its output goes on to `ast.parse` and the AST whitelist.
"""
from __future__ import annotations

import re

MAX_INT_DIGITS = 1000


class MathError(Exception):
    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


# name -> (min args, max args)
FUNCTIONS = {
    "sin": (1, 1), "cos": (1, 1), "tan": (1, 1), "asin": (1, 1), "acos": (1, 1),
    "atan": (1, 1), "sinh": (1, 1), "cosh": (1, 1), "tanh": (1, 1), "exp": (1, 1),
    "log": (1, 2), "ln": (1, 1), "sqrt": (1, 1), "abs": (1, 1), "factorial": (1, 1),
    "binomial": (2, 2), "gamma": (1, 1), "floor": (1, 1), "ceiling": (1, 1),
    "Min": (1, 8), "Max": (1, 8), "re": (1, 1), "im": (1, 1), "conjugate": (1, 1),
}
# Case-insensitive spellings users type; maps to the canonical key above.
_FUNC_ALIASES = {k.lower(): k for k in FUNCTIONS}
_FUNC_ALIASES.update({"ceil": "ceiling", "arcsin": "asin", "arccos": "acos", "arctan": "atan"})
GREEK = {
    "alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa",
    "mu", "nu", "xi", "omicron", "rho", "sigma", "tau", "upsilon", "phi", "chi", "psi", "omega",
}
CONSTANTS = {"pi": "pi", "e": "E", "E": "E", "oo": "oo", "inf": "oo", "infinity": "oo", "I": "I"}

_TOKEN = re.compile(r"\s*(?:(?P<num>\d+\.?\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?)"
                    r"|(?P<name>[A-Za-z]+)|(?P<op>\*\*|[-+*/^%()\[\],!]))")
_OPERAND_END = ("num", "sym", ")", "]")
# Functions people write without parentheses ("sin x", "ln 2x", "sqrt x"): those of one argument.
_BARE = {name for name, (lo, _hi) in FUNCTIONS.items() if lo == 1 and name not in ("Min", "Max", "gamma")}
# Names a run of letters may be made of ("xsinx", "xe"): longest first, so "sinh" wins over "sin".
_PIECES = sorted({*(k.lower() for k in FUNCTIONS), *_FUNC_ALIASES, *GREEK, "pi"}, key=len, reverse=True)
# English words that must never be read as a product of two variables ("of" as o*f).
_WORDS = {"of", "is", "by", "to", "in", "on", "at", "if", "or", "an", "as", "be", "do", "it", "me", "my",
          "so", "up", "we", "he", "no", "go", "am", "us"}
MAX_SPLIT_LETTERS = 2


def _classify(word: str) -> tuple[str, str]:
    if word in CONSTANTS or word.lower() in ("pi", "oo", "inf", "infinity"):
        return "sym", CONSTANTS.get(word) or CONSTANTS[word.lower()]
    if word in FUNCTIONS or word.lower() in _FUNC_ALIASES:
        return "func", word if word in FUNCTIONS else _FUNC_ALIASES[word.lower()]
    if len(word) == 1 or word in GREEK:
        return "sym", word
    if word.lower() in GREEK:
        return "sym", word.lower()
    raise MathError(f"I don't know the name '{_clip(word)}'. Use single-letter variables, "
                    "greek letter names and standard functions; write products with *, e.g. x*y.")


def _words(word: str, called: bool) -> list[tuple[str, str]]:
    """A run of letters: one known name, or (as people type) a product like 'xy', 'xe', 'xsinx'."""
    try:
        return [_classify(word)]
    except MathError:
        pieces = None if called or word.lower() in _WORDS else _split(word)
        if pieces is None:
            raise
        return [_classify(piece) for piece in pieces]


def _split(word: str) -> list[str] | None:
    pieces, pos = [], 0
    while pos < len(word):
        known = next((p for p in _PIECES if word.startswith(p, pos)), None)
        pieces.append(known or word[pos])
        pos += len(pieces[-1])
    # More single letters than "xy" is more likely a typo or a word than a product.
    return pieces if sum(len(p) == 1 for p in pieces) <= MAX_SPLIT_LETTERS else None


def _clip(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


def _lex(expr: str) -> list[tuple[str, str]]:
    toks: list[tuple[str, str]] = []
    pos = 0
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if not m:
            ch = expr[pos:].lstrip()[:1]
            if not ch:
                break
            if ch in "'\"`":
                raise MathError("Strings aren't allowed in math input.")
            if ch == "_":
                raise MathError("Names with underscores aren't allowed.")
            if ch == ".":
                raise MathError("Attribute access ('.') isn't allowed.")
            if ch in "<>=":
                raise MathError("Inequalities and comparisons aren't supported; use a single '=' for equations.")
            raise MathError(f"Unexpected character {ch!r} in the expression.")
        pos = m.end()
        if m.group("num"):
            new = [("num", m.group("num"))]
            if len(re.sub(r"\D", "", new[0][1].split("e")[0].split("E")[0])) > MAX_INT_DIGITS:
                raise MathError(f"Numbers are limited to {MAX_INT_DIGITS} digits.")
        elif m.group("name"):
            new = _words(m.group("name"), called=expr[pos:pos + 1] == "(")
        else:
            new = [("**", "**") if m.group("op") == "^" else (m.group("op"), m.group("op"))]
        if toks and toks[-1][0] == "sym" and new[0][0] == "num":
            sym, num = toks[-1][1], new[0][1]
            raise MathError(f"'{sym}{num}' is ambiguous: write {sym}*{num} or {sym}^{num}.")
        toks += new
    return toks


def tokenize(expr: str) -> str:
    """Return a Python-syntax string with explicit operators (2x -> 2*x, ^ -> **, 5! -> factorial(5),
    sin x -> sin(x), sin^2 x -> sin(x)**2)."""
    toks: list[tuple[str, str]] = []
    try:
        explicit = _apply_functions(_lex(expr))
    except RecursionError:
        raise MathError("The expression is too deeply nested.") from None
    for kind, val in explicit:
        prev = toks[-1][0] if toks else None
        if kind == "[" and prev in ("sym", ")"):
            raise MathError("Indexing with [...] isn't allowed; write matrices as [[1,2],[3,4]].")
        if prev in _OPERAND_END and (kind in ("sym", "func", "(", "[") or (kind == "num" and prev != "num")):
            toks.append(("*", "*"))
        if kind == "!":
            _wrap_factorial(toks)
            continue
        toks.append((kind, val))
    return " ".join(v for _, v in toks)


def _apply_functions(toks: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Put the parentheses people leave out around a function's argument, as they read it:
    'sin x^2' is sin(x^2), 'sin 2x' is sin(2x), 'x sin x cos x' is x*sin(x)*cos(x)."""
    out, pos = [], 0
    while pos < len(toks):
        if _is_bare(toks, pos):
            group, pos = _application(toks, pos)
            out += group
        else:
            out.append(toks[pos])
            pos += 1
    return out


def _is_bare(toks, pos: int) -> bool:
    return toks[pos][0] == "func" and (pos + 1 == len(toks) or toks[pos + 1][0] != "(")


def _application(toks, pos: int) -> tuple[list, int]:
    name = toks[pos][1]
    if name == "gamma":  # bare 'gamma' is the greek letter
        return [("sym", "gamma")], pos + 1
    if name not in _BARE:
        raise MathError(f"{name} needs parentheses, e.g. {name}(x, y).")
    power, pos = [], pos + 1
    if pos < len(toks) and toks[pos][0] == "**":  # sin^2 x is (sin x)^2
        if pos + 1 < len(toks) and toks[pos + 1][0] == "-":
            raise MathError(f"Write inverse functions by name, e.g. a{name}(x), or 1/{name}(x) for a reciprocal.")
        power, pos = _atom(toks, pos + 1)
        if not power:
            raise MathError(f"Write the power of {name} as a number, e.g. {name}^2 x.")
    arg, pos = _argument(toks, pos)
    if not arg:
        raise MathError(f"{name} needs an argument, e.g. {name}(x) or {name} x.")
    group = [("func", name), ("(", "(")] + arg + [(")", ")")]
    if power:
        group = [("(", "(")] + group + [(")", ")"), ("**", "**")] + power
    return group, pos


def _argument(toks, pos: int) -> tuple[list, int]:
    """Numbers, variables and brackets multiplied by juxtaposition, each with its powers; it ends
    at an operator or at another function, unless the argument is itself a function (sin cos x)."""
    if pos < len(toks) and toks[pos][0] == "func":
        if _is_bare(toks, pos):
            return _application(toks, pos)
        return _atom(toks, pos)
    arg: list = []
    if pos < len(toks) and toks[pos][0] == "-":  # sin -x
        arg, pos = [("-", "-")], pos + 1
    while True:
        atom, pos = _atom(toks, pos)
        if not atom:
            return (arg, pos) if arg != [("-", "-")] else ([], pos - 1)
        arg += atom
        while pos < len(toks) and toks[pos][0] == "**":
            sign = [("-", "-")] if pos + 1 < len(toks) and toks[pos + 1][0] == "-" else []
            exponent, after = _atom(toks, pos + 1 + len(sign))
            if not exponent:
                return arg, pos
            arg += [("**", "**"), *sign, *exponent]
            pos = after


def _atom(toks, pos: int) -> tuple[list, int]:
    """One operand at pos (a number, a variable, a bracket, f(...)) and any '!' after it; [] if none."""
    if pos >= len(toks):
        return [], pos
    start, kind = pos, toks[pos][0]
    if kind == "func" and not _is_bare(toks, pos):
        pos += 1
        kind = "("
    if kind in ("(", "["):
        depth = 0
        while pos < len(toks):
            depth += {"(": 1, "[": 1, ")": -1, "]": -1}.get(toks[pos][0], 0)
            pos += 1
            if depth == 0:
                break
    elif kind in ("num", "sym"):
        pos += 1
    else:
        return [], pos
    while pos < len(toks) and toks[pos][0] == "!":
        pos += 1
    return _apply_functions(toks[start:pos]), pos


def _wrap_factorial(toks: list[tuple[str, str]]) -> None:
    if not toks or toks[-1][0] not in _OPERAND_END:
        raise MathError("'!' must follow a number, a variable or a bracket, e.g. 5!.")
    start = len(toks) - 1
    if toks[-1][0] in (")", "]"):
        depth = 0
        for start in range(len(toks) - 1, -1, -1):
            depth += {")": 1, "]": 1, "(": -1, "[": -1}.get(toks[start][0], 0)
            if depth == 0:
                break
        if start > 0 and toks[start - 1][0] == "func":
            start -= 1
    toks[start:] = [("func", "factorial"), ("(", "(")] + toks[start:] + [(")", ")")]
