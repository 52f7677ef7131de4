"""Whitelist parser for the math tool.

Untrusted text is turned into a small intermediate representation (IR) of
plain tuples using only the `ast` module, so the web process never needs
SymPy and never evaluates anything. The IR is rebuilt into SymPy objects in
the worker process by `build`, which constructs every object from a fixed
mapping -- no `sympify`, `eval` or `getattr` on user-supplied names.

IR nodes: ("int", n) ("rat", p, q) ("sym", name) ("const", name)
          ("neg", a) ("bin", op, a, b) ("call", fname, [args]) ("list", [items])
"""
from __future__ import annotations

import ast
import math
import re
import unicodedata
from fractions import Fraction

# MathError lives with the lexer (which raises it first); callers import it from here.
from agents.tools.math_lex import CONSTANTS, FUNCTIONS, GREEK, MathError, _clip, tokenize

MAX_INPUT_CHARS = 2000
# Long sums nest one level per term in the AST, so this is generous; recursion stays < 1000.
MAX_DEPTH = 200
# ~10^5 decimal digits: anything bigger is useless to a chat user and slow to build.
MAX_RESULT_BITS = 332_200
MAX_FACTORIAL_ARG = 20_000
MAX_MATRIX_DIM = 12


_UNICODE = {
    "\u2212": "-", "\u2013": "-", "\u2014": "-", "\u00d7": "*", "\u22c5": "*", "\u00b7": "*",
    "\u2219": "*", "\u00f7": "/", "\u2044": "/", "\u221a": "sqrt", "\u03c0": "pi", "\u221e": "oo",
    "\u2192": "->", "\u2264": "<=", "\u2265": ">=", "\u2260": "!=", "\u222b": "integral of ",
    "\u00a0": " ", "\u2009": " ", "\u202f": " ", "\u2018": "'", "\u2019": "'",
    "\u201c": '"', "\u201d": '"',
}
_SUPERSCRIPTS = str.maketrans("\u2070\u00b9\u00b2\u00b3\u2074\u2075\u2076\u2077\u2078\u2079\u207b",
                              "0123456789-")
_GREEK_LETTERS = {unicodedata.lookup(f"GREEK SMALL LETTER {n.upper()}"): n for n in GREEK}


def normalise_text(query) -> str:
    """Validate raw input and map the unicode people paste into ASCII."""
    if not isinstance(query, str):
        raise MathError("The question must be text.")
    if len(query) > MAX_INPUT_CHARS:
        raise MathError(f"That input is too long (over {MAX_INPUT_CHARS} characters).")
    if not query.strip():
        raise MathError("Please give me an expression or a question, e.g. 'integrate x^2'.")
    for ch in query:
        if unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co") and ch not in "\t\n\r":
            raise MathError(f"The input contains a control or invisible character (U+{ord(ch):04X}).")
    # Superscripts first: NFKC would turn x² into x2, silently changing the meaning.
    text = re.sub("[\u2070\u00b9\u00b2\u00b3\u2074-\u2079\u207b]+",
                  lambda m: "^(" + m.group().translate(_SUPERSCRIPTS) + ")", query)
    for src, dst in {**_UNICODE, **_GREEK_LETTERS}.items():
        text = text.replace(src, f" {dst} " if dst in GREEK else dst)
    text = unicodedata.normalize("NFKC", text)
    for ch in text:
        if ord(ch) > 126:
            raise MathError(f"Unsupported character {ch!r} in the input.")
    return " ".join(text.split())


def to_ir(expr: str):
    """Parse one expression (no '=') into IR, allowing only whitelisted syntax."""
    source = tokenize(expr)
    if not source:
        raise MathError("The expression is empty.")
    try:
        tree = ast.parse(source, mode="eval")
    except (SyntaxError, ValueError):
        raise MathError(f"I couldn't parse '{_clip(expr)}' as a math expression.") from None
    except (RecursionError, MemoryError):
        raise MathError("The expression is too deeply nested.") from None
    return _walk(tree.body, 0)


_BINOPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.Pow: "**", ast.Mod: "%"}
_REJECTED = {
    ast.Attribute: "Attribute access isn't allowed.", ast.Subscript: "Indexing isn't allowed.",
    ast.Lambda: "Lambdas aren't allowed.", ast.Compare: "Comparisons aren't supported; use '=' for equations.",
    ast.Tuple: "Tuples aren't supported; use [..] for vectors and matrices.",
}


def _walk(node, depth: int):
    if depth > MAX_DEPTH:
        raise MathError("The expression is too deeply nested.")
    d = depth + 1
    if isinstance(node, ast.Constant):
        v = node.value
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise MathError("Only numbers are allowed as literals (no strings or other constants).")
        if isinstance(v, int):
            return ("int", v)
        if not math.isfinite(v):
            raise MathError("That number is too large.")
        # repr() gives the shortest decimal, so 0.1 becomes exactly 1/10.
        f = Fraction(repr(v))
        return ("rat", f.numerator, f.denominator)
    if isinstance(node, ast.Name):
        if node.id.startswith("_") or "__" in node.id:
            raise MathError("Names with underscores aren't allowed.")
        if node.id in CONSTANTS.values():
            return ("const", node.id)
        if node.id in GREEK:
            return ("sym", node.id)
        if node.id in FUNCTIONS:
            raise MathError(f"{node.id} needs parentheses, e.g. {node.id}(x).")
        if len(node.id) == 1 or node.id in GREEK:
            return ("sym", node.id)
        raise MathError(f"I don't know the name '{_clip(node.id)}'.")
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        return ("bin", _BINOPS[type(node.op)], _walk(node.left, d), _walk(node.right, d))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        inner = _walk(node.operand, d)
        return ("neg", inner) if isinstance(node.op, ast.USub) else inner
    if isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS:
            raise MathError("Only standard math functions can be called (sin, log, sqrt, ...).")
        if node.keywords or any(isinstance(a, ast.Starred) for a in node.args):
            raise MathError("Functions take plain positional arguments only.")
        lo, hi = FUNCTIONS[node.func.id]
        if not lo <= len(node.args) <= hi:
            raise MathError(f"{node.func.id} takes {lo if lo == hi else f'{lo} to {hi}'} argument(s).")
        return ("call", node.func.id, [_walk(a, d) for a in node.args])
    if isinstance(node, ast.List):
        if not node.elts or len(node.elts) > MAX_MATRIX_DIM:
            raise MathError(f"Vectors and matrices must have 1 to {MAX_MATRIX_DIM} rows and columns.")
        return ("list", [_walk(e, d) for e in node.elts])
    for kind, msg in _REJECTED.items():
        if isinstance(node, kind):
            raise MathError(msg)
    raise MathError(f"That kind of expression ({type(node).__name__}) isn't allowed.")


def ir_symbols(ir) -> set[str]:
    if ir[0] == "sym":
        return {ir[1]}
    kids = ir[1:] if ir[0] != "call" else ir[2]
    out: set[str] = set()
    for k in kids:
        if isinstance(k, tuple):
            out |= ir_symbols(k)
        elif isinstance(k, list):
            for item in k:
                out |= ir_symbols(item)
    return out


# ---------------------------------------------------------------- worker side

def build(ir, numeric: bool = False):
    """IR -> SymPy object (runs in the worker). `numeric` builds with 30-digit floats
    so results can be re-checked through a different arithmetic path."""
    import sympy as sp

    kind = ir[0]
    if kind == "int":
        return sp.Float(ir[1], 30) if numeric else sp.Integer(ir[1])
    if kind == "rat":
        return sp.Float(sp.Rational(ir[1], ir[2]), 30) if numeric else sp.Rational(ir[1], ir[2])
    if kind == "sym":
        return sp.Symbol(ir[1])
    if kind == "const":
        return {"pi": sp.pi, "E": sp.E, "oo": sp.oo, "I": sp.I}[ir[1]]
    if kind == "neg":
        return -build(ir[1], numeric)
    if kind == "list":
        items = [build(i, numeric) for i in ir[1]]
        if all(isinstance(i, sp.MatrixBase) for i in items):
            if len({i.shape for i in items}) != 1 or items[0].cols != 1:
                raise MathError("Matrix rows must all have the same length.")
            return sp.Matrix([list(i) for i in items])
        if any(isinstance(i, sp.MatrixBase) for i in items):
            raise MathError("A matrix must be a list of rows, e.g. [[1,2],[3,4]].")
        return sp.Matrix(items)
    if kind == "bin":
        a, b = build(ir[2], numeric), build(ir[3], numeric)
        op = ir[1]
        if op == "**":
            _check_power(a, b)
            out = a ** b
        elif op == "%":
            if isinstance(a, sp.MatrixBase) or isinstance(b, sp.MatrixBase):
                raise MathError("'%' isn't defined for matrices.")
            if b == 0:
                raise MathError("Division by zero in '%'.")
            out = sp.Mod(a, b)
        else:
            out = {"+": lambda: a + b, "-": lambda: a - b, "*": lambda: a * b, "/": lambda: a / b}[op]()
        return _check_size(out)
    if kind == "call":
        args = [build(a, numeric) for a in ir[2]]
        if any(isinstance(a, sp.MatrixBase) for a in args):
            raise MathError(f"{ir[1]} can't take a matrix argument.")
        _check_call(ir[1], args)
        fn = {"sin": sp.sin, "cos": sp.cos, "tan": sp.tan, "asin": sp.asin, "acos": sp.acos,
              "atan": sp.atan, "sinh": sp.sinh, "cosh": sp.cosh, "tanh": sp.tanh, "exp": sp.exp,
              "log": sp.log, "ln": sp.log, "sqrt": sp.sqrt, "abs": sp.Abs, "factorial": sp.factorial,
              "binomial": sp.binomial, "gamma": sp.gamma, "floor": sp.floor, "ceiling": sp.ceiling,
              "Min": sp.Min, "Max": sp.Max, "re": sp.re, "im": sp.im, "conjugate": sp.conjugate}[ir[1]]
        return _check_size(fn(*args))
    raise MathError("Internal error: unknown expression node.")


def _bits(r) -> float:
    return max(abs(int(r.p)).bit_length(), int(r.q).bit_length())


def _check_power(base, exp) -> None:
    # SymPy evaluates Integer**Integer eagerly, so the size must be estimated before `**`.
    import sympy as sp
    if not (getattr(exp, "is_Rational", False) and getattr(base, "is_number", False)):
        return
    if isinstance(base, sp.MatrixBase) or base in (0, 1, -1):
        return
    mag = abs(float(exp)) if abs(exp) < 10**300 else math.inf
    if base.is_Rational:
        if mag * _bits(base) > MAX_RESULT_BITS:
            raise MathError("That number would have more than 100,000 digits; I won't compute it.")
    elif mag > 100_000 and not base.is_Float:
        raise MathError("That exponent is too large to compute exactly.")


def _check_call(name: str, args) -> None:
    n = args[0]
    if name in ("factorial", "gamma") and n.is_Rational and abs(n) > MAX_FACTORIAL_ARG:
        raise MathError(f"{name} is limited to arguments up to {MAX_FACTORIAL_ARG:,} "
                        "(bigger results have more than 100,000 digits).")
    if name == "binomial" and n.is_Integer and args[1].is_Integer and n > 0:
        k = min(int(args[1]), int(n - args[1]))
        if k > 0 and k * math.log2(int(n)) > MAX_RESULT_BITS:
            raise MathError("That binomial coefficient would have more than 100,000 digits.")


def _check_size(value):
    if getattr(value, "is_Rational", False) and _bits(value) > MAX_RESULT_BITS + 64:
        raise MathError("That number would have more than 100,000 digits; I won't compute it.")
    return value


# ---------------------------------------------------------------- intent

_PREC = {"+": 1, "-": 1, "*": 2, "/": 2, "%": 2, "**": 4}


def ir_str(ir) -> str:
    """Print IR as typed (2**10 + 3/4), with only the parentheses that are needed."""
    return _fmt(ir)[0]


def _fmt(ir) -> tuple[str, int]:
    kind = ir[0]
    if kind == "int":
        return str(ir[1]), 5
    if kind == "rat":
        return f"{ir[1]}/{ir[2]}" if ir[2] != 1 else str(ir[1]), 2 if ir[2] != 1 else 5
    if kind in ("sym", "const"):
        return ir[1], 5
    if kind == "neg":
        s, p = _fmt(ir[1])
        return "-" + (s if p >= 3 else f"({s})"), 3
    if kind == "call":
        return f"{ir[1]}({', '.join(ir_str(a) for a in ir[2])})", 5
    if kind == "list":
        return "[" + ", ".join(ir_str(i) for i in ir[1]) + "]", 5
    op, prec = ir[1], _PREC[ir[1]]
    (left, lp), (right, rp) = _fmt(ir[2]), _fmt(ir[3])
    if op == "**":
        left = left if lp >= 5 else f"({left})"
        right = right if rp >= 4 else f"({right})"
    else:
        left = left if lp >= prec else f"({left})"
        right = right if rp > prec or (rp == prec and op in "+*") else f"({right})"
    return left + (f" {op} " if prec == 1 else op) + right, prec


_TEX_CONST = {"pi": r"\pi", "E": "e", "oo": r"\infty", "I": "i"}
_TEX_NAMED = {"sin", "cos", "tan", "sinh", "cosh", "tanh", "ln", "log"}
_TEX_ARC = {"asin": r"\arcsin", "acos": r"\arccos", "atan": r"\arctan"}


def ir_latex(ir) -> str:
    """LaTeX of the expression as typed (2^{10} + \\frac{3}{4}, not \\frac{4099}{4}); needs no SymPy."""
    return _tex(ir)[0]


def _tex(ir) -> tuple[str, int]:
    kind = ir[0]
    if kind == "int":
        return str(ir[1]), 5
    if kind == "rat":
        return (rf"\frac{{{ir[1]}}}{{{ir[2]}}}", 5) if ir[2] != 1 else (str(ir[1]), 5)
    if kind == "const":
        return _TEX_CONST[ir[1]], 5
    if kind == "sym":
        return (f"\\{ir[1]}" if ir[1] in GREEK else ir[1]), 5
    if kind == "neg":
        inner, p = _tex(ir[1])
        return "-" + (inner if p >= 3 else rf"\left({inner}\right)"), 3
    if kind == "list":
        if all(item[0] == "list" for item in ir[1]):
            rows = [" & ".join(ir_latex(v) for v in row[1]) for row in ir[1]]
            return r"\begin{bmatrix}" + r" \\ ".join(rows) + r"\end{bmatrix}", 5
        return r"\left[" + ", ".join(ir_latex(v) for v in ir[1]) + r"\right]", 5
    if kind == "call":
        return _tex_call(ir[1], [ir_latex(a) for a in ir[2]]), 5
    op, prec = ir[1], _PREC[ir[1]]
    (left, lp), (right, rp) = _tex(ir[2]), _tex(ir[3])
    if op == "/":
        return rf"\frac{{{left}}}{{{right}}}", 5
    if op == "**":
        return (left if lp >= 5 else rf"\left({left}\right)") + f"^{{{right}}}", 4
    left = left if lp >= prec else rf"\left({left}\right)"
    right = right if rp > prec or (rp == prec and op in "+*") else rf"\left({right}\right)"
    # 2x, x sin x: juxtaposed as written; a number or fraction on the right keeps the dot (2 · 3).
    times = r" \cdot " if right[:1].isdigit() or right.startswith((r"\frac", "-")) else " "
    return left + {"+": " + ", "-": " - ", "*": times, "%": r" \bmod "}[op] + right, prec


def _tex_call(name: str, args: list[str]) -> str:
    joined = ", ".join(args)
    if name == "sqrt":
        return rf"\sqrt{{{joined}}}"
    if name == "abs":
        return rf"\left|{joined}\right|"
    if name == "exp":
        return rf"e^{{{joined}}}"
    if name == "factorial":
        return f"{joined}!" if joined.isalnum() else rf"\left({joined}\right)!"
    if name == "log" and len(args) == 2:
        return rf"\log_{{{args[1]}}}\left({args[0]}\right)"
    head = _TEX_ARC.get(name) or (f"\\{name}" if name in _TEX_NAMED else rf"\operatorname{{{name}}}")
    return rf"{head}\left({joined}\right)"
