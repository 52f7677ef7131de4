"""The math worker's side: build SymPy objects from the parsed IR, compute, verify, explain.

Runs only inside the math tool's worker processes (agents/tools/math.py), never in the web
process: a computation here may be killed at its time limit at any moment.
"""
from __future__ import annotations

from agents.tools.math_parse import MathError


def run_job(job: dict) -> dict:
    try:
        return {"ok": True, "result": _compute(job)}
    except MathError as exc:
        return {"ok": False, "message": exc.message}
    except MemoryError:
        return {"ok": False, "message": "The calculation needed too much memory and was stopped."}
    except RecursionError:
        return {"ok": False, "message": "The expression is too deeply nested to compute."}
    except ZeroDivisionError:
        return {"ok": False, "message": "The calculation divides by zero."}
    except NotImplementedError:
        return {"ok": False, "message": "SymPy can't solve this kind of problem exactly."}
    except Exception as exc:  # SymPy raises many types for invalid maths (shape errors, ...)
        detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        return {"ok": False, "message": f"That can't be computed: {detail}"}


MAX_RESULT_CHARS = 110_000
# Beyond this much LaTeX a result is shown as a clipped code span: nobody reads it typeset.
MAX_TEX_CHARS = 400
MAX_STEP_CHARS = 1500


def _tex(value, template: str = "{}", display: bool = False) -> str:
    """Math between Markdown math delimiters ($...$, $$...$$ on its own paragraph), as the console
    and every API carry it; a value too long to typeset is a clipped code span instead."""
    import sympy as sp

    latex = sp.latex(value) if len(str(value)) <= 4 * MAX_TEX_CHARS else None
    if latex is None or len(latex) > MAX_TEX_CHARS:
        text = str(value)
        clipped = f"`{text[:60]}…{text[-20:]}` ({len(text):,} characters)"
        return f"\n\n{clipped}\n\n" if display else clipped
    head, slot, tail = template.rpartition("{}")  # the slot is the last {}: LaTeX may hold its own
    math = head + latex + tail if slot else latex
    return f"\n\n$${math}$$\n\n" if display else f"${math}$"


def _eq(left, right) -> str:
    import sympy as sp
    return _tex(sp.Eq(left, right, evaluate=False))


def _compute(job: dict) -> dict:
    import sympy as sp

    from agents.tools.math_parse import build, ir_str

    if job["op"] == "solve":
        out = _solve(job)
    else:
        expr = build(job["expr"])
        as_typed = job["op"] in ("evaluate", "matrix") or isinstance(expr, sp.MatrixBase)
        shown = ir_str(job["expr"]) if as_typed else str(expr)
        if job["op"] == "matrix" or isinstance(expr, sp.MatrixBase):
            out = _matrix(job, expr, shown)
        else:
            var = _pick_var(expr, job.get("var"))
            out = _OPS[job["op"]](job, expr, var, shown)
    op, shown, value, steps, verified, answer = out
    text = str(value)
    if len(text) > MAX_RESULT_CHARS:
        raise MathError("The result is too large to show (over 110,000 characters).")
    return {"operation": op, "expression": shown, "result": text, "latex": sp.latex(value),
            "steps": [s if len(s) <= MAX_STEP_CHARS else "(this step is too long to show)" for s in steps],
            "verified": bool(verified), "answer_text": answer.strip()}


def _pick_var(expr, given):
    import sympy as sp
    if given:
        return sp.Symbol(given)
    free = sorted(expr.free_symbols, key=str)
    for name in ("x", "y", "z", "t"):
        if sp.Symbol(name) in free:
            return sp.Symbol(name)
    return free[0] if free else sp.Symbol("x")


def _points(syms, count: int = 6):
    """Fixed pseudo-random rational points in (0.35, 2.6): inside the real domain of log, sqrt, ..."""
    import random

    import sympy as sp
    rng = random.Random(20240611)
    return [{s: sp.Rational(rng.randint(13, 97), 37) for s in syms} for _ in range(count)]


def _same(a, b) -> bool:
    """a == b, checked numerically at random points, with a symbolic fallback."""
    import cmath

    import sympy as sp
    if isinstance(a, sp.MatrixBase) or isinstance(b, sp.MatrixBase):
        return a.shape == b.shape and all(_same(p, q) for p, q in zip(a, b, strict=True))
    diff = a - b
    checked = 0
    for subs in _points(sorted(diff.free_symbols, key=str)):
        try:
            # evalf(subs=...) stays numeric; exact substitution can build gigantic rationals.
            va, vb = complex(a.evalf(30, subs=subs)), complex(b.evalf(30, subs=subs))
        except (TypeError, ValueError, ZeroDivisionError, OverflowError):
            continue
        if not (cmath.isfinite(va) and cmath.isfinite(vb)):
            continue
        if abs(va - vb) > 1e-9 * max(1.0, abs(va)):
            return False
        checked += 1
        if checked == 3:
            return True
    try:
        return sp.simplify(diff) == 0
    except Exception:
        return False


def _integrate(job, f, x, shown):
    import sympy as sp

    from agents.tools.math_parse import build
    F = sp.integrate(f, x)
    terms = sp.Add.make_args(f)
    if len(terms) > 1:
        steps = ["Integrate term by term: " + ", ".join(_eq(sp.Integral(t, x), sp.integrate(t, x)) for t in terms[:6])]
    else:
        power = f.is_Pow and f.base == x and not f.exp.has(x) and f.exp != -1 or f == x
        by_parts = f.is_Mul and sum(1 for a in f.args if a.has(x)) >= 2
        rule = "Apply the power rule" if power else "Integrate by parts" if by_parts else "Integrate"
        steps = [f"{rule}: {_eq(sp.Integral(f, x), F)}"]
    if F.has(sp.Integral):
        return ("integrate", shown, F, steps, False, f"I couldn't find a closed form for the integral of {_tex(f)}.")
    if "bounds" in job:
        a, b = (build(v) for v in job["bounds"])
        value = sp.integrate(f, (x, a, b))
        steps.append(f"Evaluate F({_tex(b)}) − F({_tex(a)}) = {_tex(value)}")
        check = sp.Integral(f, (x, a, b)).evalf(20) if not value.free_symbols else None
        ok = check is not None and value.is_finite and abs(complex(check) - complex(sp.N(value, 20))) < 1e-9
        return ("integrate", shown, value, steps, ok,
                f"The integral of {_tex(f)} from {_tex(a)} to {_tex(b)} is"
                + _tex(value, sp.latex(sp.Integral(f, (x, a, b))) + " = {}", display=True))
    steps.append("Add the constant of integration: $C$")
    return ("integrate", shown, F, steps, _same(sp.diff(F, x), f),
            f"The integral of {_tex(f)} with respect to {_tex(x)} is"
            + _tex(F, sp.latex(sp.Integral(f, x)) + " = {} + C", display=True))


def _differentiate(job, f, x, shown):
    import sympy as sp
    n = job.get("n", 1)
    d = sp.diff(f, x, n)
    rules = []
    if f.is_Add:
        rules.append("differentiate term by term")
    if f.is_Mul and sum(1 for a in f.args if a.has(x)) >= 2:
        rules.append("product rule $(uv)' = u'v + uv'$")
    if f.is_Pow and f.base.has(x) and not f.exp.has(x):
        rules.append("power rule $\\frac{d}{dx} x^n = n x^{n-1}$")
    if any(a.has(x) and a != x for g in sp.preorder_traversal(f) if isinstance(g, sp.Function) for a in g.args):
        rules.append("chain rule")
    order = {1: "", 2: "second ", 3: "third "}[n]
    steps = ([f"Use the {', '.join(rules)}"] if rules else []) + [_eq(sp.Derivative(f, (x, n)), d)]
    # Independent check: central finite difference at a random point, 60-digit precision.
    ok = False
    others = {s: sp.Rational(17, 23) for s in f.free_symbols - {x}}
    p, h = sp.Rational(29, 31), sp.Rational(1, 10**6)
    try:
        # evalf(subs=...) stays numeric: exact substitution could build gigantic rationals.
        fd = sum((-1) ** k * sp.binomial(n, k) * f.evalf(60, subs={**others, x: p + (sp.Rational(n, 2) - k) * h})
                 for k in range(n + 1)) / h**n
        got, want = complex(sp.N(fd, 60)), complex(d.evalf(60, subs={**others, x: p}))
        ok = abs(got - want) <= 1e-6 * max(1.0, abs(want))
    except (TypeError, ValueError, ZeroDivisionError):
        pass
    return ("differentiate", shown, d, steps, ok, f"The {order}derivative of {_tex(f)} with respect to {_tex(x)} is"
            + _tex(d, sp.latex(sp.Derivative(f, (x, n))) + " = {}", display=True))


def _zero(v) -> bool:
    import sympy as sp
    v = sp.expand(v)
    return v == 0 or _same(v, sp.Integer(0))


def _solve(job):
    import sympy as sp

    from agents.tools.math_parse import build
    exprs, shown = [], []
    for lhs, rhs in job["equations"]:
        a, b = build(lhs), build(rhs)
        if isinstance(a, sp.MatrixBase) or isinstance(b, sp.MatrixBase):
            raise MathError("Matrix equations aren't supported; solve them entry by entry.")
        exprs.append(a - b)
        shown.append((a, b))
    syms = sorted(set().union(*(e.free_symbols for e in exprs)), key=str)
    if not syms:
        if all(sp.simplify(e) == 0 for e in exprs):
            raise MathError("That equation holds for every value, so there is nothing to solve.")
        raise MathError("There's no variable to solve for, and the equation is false as written.")
    if len(exprs) == 1:
        e, x = exprs[0], _pick_var(exprs[0], job.get("var"))
        sols = sorted(sp.solve(e, x), key=sp.default_sort_key)
        zero = sp.Integer(0)
        steps = [f"Move everything to one side: {_eq(e, zero)}"]
        if e.is_polynomial(x):
            fac = sp.factor(e)
            if fac != e and (fac.is_Mul or fac.is_Pow):
                steps += [f"Factor: {_eq(fac, zero)}", "Set each factor to zero"]
            elif sp.degree(e, x) == 2:
                a, b, c = sp.Poly(e, x).all_coeffs()
                steps.append(f"Apply the quadratic formula with $a = {sp.latex(a)}$, $b = {sp.latex(b)}$, "
                             f"$c = {sp.latex(c)}$")
        listed = ", ".join(_eq(x, s) for s in sols)
        steps.append(f"Solutions: {listed}" if sols else "No solutions found")
        ok = bool(sols) and all(_zero(e.subs(x, s)) for s in sols)
        answer = (f"The solution{'s' if len(sols) > 1 else ''} of {_eq(*shown[0])}: "
                  + " and ".join(_eq(x, s) for s in sols) + ".") if sols else \
            f"I found no solutions of {_eq(*shown[0])}."
        return "solve", _plain(shown[0]), sols, steps, ok, answer
    sols = sp.solve(exprs, syms, dict=True)
    value = sols[0] if len(sols) == 1 else sols
    ok = bool(sols) and all(_zero(e.subs(s)) for s in sols for e in exprs)
    listed = "; ".join(", ".join(_eq(k, v) for k, v in sol.items()) for sol in sols)
    steps = [f"Solve the system {', '.join(_eq(*eq) for eq in shown)} for {', '.join(_tex(v) for v in syms)}",
             f"Solutions: {listed}" if sols else "No solutions found"]
    return ("solve", ", ".join(_plain(eq) for eq in shown), value, steps, ok,
            f"The system has the solution{'s' if len(sols) > 1 else ''} {listed}." if sols
            else "The system has no solutions.")


def _plain(equation) -> str:
    return f"{equation[0]} = {equation[1]}"


def _simplify(job, f, x, shown):
    import sympy as sp
    res = sp.simplify(f)
    steps = []
    num, den = sp.fraction(sp.together(f))
    if den != 1 and num.is_polynomial() and den.is_polynomial():
        steps += [f"Factor the numerator: {_tex(sp.factor(num))}", f"Factor the denominator: {_tex(sp.factor(den))}"]
        common = sp.gcd(num, den)
        if common != 1:
            steps.append(f"Cancel the common factor {_tex(common)}")
    else:
        steps.append("Combine terms and apply algebraic and trigonometric identities")
    steps.append(f"Result: {_tex(res)}")
    return "simplify", shown, res, steps, _same(f, res), f"{_tex(f)} simplifies to" + _tex(res, display=True)


MAX_EXPAND_POWER = 200


def _expand(job, f, x, shown):
    import sympy as sp
    # (x+1)^100000 has 100001 terms: refuse it at once rather than at the time limit.
    if any(p.exp.is_Integer and abs(p.exp) > MAX_EXPAND_POWER and p.base.is_Add for p in f.atoms(sp.Pow)):
        raise MathError(f"That power is too large to expand (the limit is {MAX_EXPAND_POWER}).")
    res = sp.expand(f)
    if f.is_Pow and f.base.is_Add and f.exp.is_Integer:
        steps = [f"Apply the binomial theorem to {_tex(f)}"]
    else:
        steps = ["Multiply out every product term by term"]
    steps.append(f"Collect like terms: {_tex(res)}")
    return "expand", shown, res, steps, _same(f, res), f"{_tex(f)} expands to" + _tex(res, display=True)


def _factor(job, f, x, shown):
    import sympy as sp
    if f.is_Integer and abs(f) > 1:
        primes = sp.factorint(f)
        res = sp.Mul(*[sp.Pow(p, e, evaluate=False) if e > 1 else p for p, e in primes.items()], evaluate=False)
        steps = [f"Divide out the primes {', '.join(str(p) for p in primes if p > 0)}", _eq(f, res)]
        ok = sp.prod([p**e for p, e in primes.items()]) == f
        return "factor", shown, res, steps, ok, f"The prime factorisation of {_tex(f)} is" + _tex(res, display=True)
    res = sp.factor(f)
    steps = []
    if f.is_polynomial(x) and len(f.free_symbols) == 1 and sp.degree(f, x) > 1:
        roots = sp.roots(sp.Poly(f, x))
        if roots:
            steps.append("Find the roots: " + ", ".join(_eq(x, r) for r in roots))
    steps.append(f"Write as a product of factors: {_tex(res)}")
    return "factor", shown, res, steps, _same(f, res), f"{_tex(f)} factors as" + _tex(res, display=True)


def _limit(job, f, x, shown):
    import sympy as sp

    from agents.tools.math_parse import build
    a, side = build(job["point"]), job.get("dir", "+-")
    res = sp.limit(f, x, a, "+" if a.is_infinite else side)
    steps = []
    direct = f.subs(x, a) if a.is_finite else sp.nan
    if direct.is_finite:
        steps.append(f"Direct substitution gives {_tex(direct)}; the function is continuous there")
    else:
        num, den = sp.fraction(sp.together(f))
        if a.is_finite and num.subs(x, a) == 0 and den.subs(x, a) == 0:
            dn, dd = sp.diff(num, x), sp.diff(den, x)
            steps += ["Substituting gives $0/0$, an indeterminate form",
                      f"Apply L'Hôpital's rule: {_tex(sp.Limit(dn / dd, x, a, side))}"]
        else:
            steps.append("Direct substitution doesn't give a value; analyse the behaviour near the point")
    lim = sp.Limit(f, x, a, "+" if a.is_infinite else side)
    steps.append(_eq(lim, res))
    return ("limit", shown, res, steps, _check_limit(f, x, a, side, res),
            "The limit is" + _tex(res, sp.latex(lim) + " = {}", display=True) + _gloss(res))


def _check_limit(f, x, a, side, res) -> bool:
    import sympy as sp
    if f.free_symbols - {x} or not res.is_number:
        return False
    if a.is_infinite:
        points = [sp.sign(a) * sp.Integer(10) ** k for k in (6, 9)]
    else:
        signs = {"+": [1], "-": [-1]}.get(side, [1, -1])
        points = [a + s * sp.Rational(1, 10**k) for s in signs for k in (7, 10)]
    try:
        vals = [complex(f.evalf(40, subs={x: p})) for p in points]
    except (TypeError, ValueError, ZeroDivisionError, OverflowError):
        return False
    if res.is_infinite:
        return all(abs(v) > 1e4 for v in vals)
    want = complex(sp.N(res, 40))
    return all(abs(v - want) <= 1e-4 * max(1.0, abs(want)) for v in vals)


def _series(job, f, x, shown):
    import sympy as sp

    from agents.tools.math_parse import build
    x0, n = build(job.get("point", ("int", 0))), job.get("order", 6)
    res = sp.series(f, x, x0, n)
    steps, ok = [], False
    if x0.is_finite:
        coeffs = []
        for k in range(n):
            dk = sp.diff(f, x, k)
            ck = dk.subs(x, x0)
            # Removable singularities (sin(x)/x at 0) need the limit, not plain substitution.
            coeffs.append(ck if ck.is_finite else sp.limit(dk, x, x0))
        at = sp.latex(x0)
        steps.append(f"Evaluate derivatives at {_eq(x, x0)}: " +
                     ", ".join(_tex(c, f"f^{{({k})}}({at}) = {{}}") for k, c in enumerate(coeffs[:4])))
        steps.append(f"Taylor formula: $\\sum_{{k<{n}}} \\frac{{f^{{(k)}}({at})}}{{k!}} ({sp.latex(x - x0)})^k$")
        if all(c.is_finite for c in coeffs):
            taylor = sum(c / sp.factorial(k) * (x - x0) ** k for k, c in enumerate(coeffs))
            ok = _same(taylor, res.removeO())
    steps.append(f"Series: {_tex(res)}")
    return ("series", shown, res, steps, ok,
            f"The series of {_tex(f)} around {_eq(x, x0)} (order {n}) is" + _tex(res, display=True))


def _gloss(value) -> str:
    """Plain words for SymPy's special values in the friendly answer."""
    import sympy as sp
    # ∞ and −∞ need no words: the typeset answer shows them.
    words = {sp.zoo: "complex infinity: the value is undefined / grows without bound with no fixed sign",
             sp.nan: "undefined"}
    return f"({words[value]})" if value in words else ""


def _evaluate(job, value, x, shown):
    import sympy as sp

    from agents.tools.math_parse import build, ir_latex, ir_str
    ir, steps = job["expr"], []
    if ir[0] == "bin":
        left, right = build(ir[2]), build(ir[3])
        for part, val in ((ir[2], left), (ir[3], right)):
            if ir_str(part) != str(val):
                steps.append(_tex(val, ir_latex(part) + " = {}"))
        a, b = sp.latex(left), sp.latex(right)
        shape = {"*": f"{a} \\cdot {b}", "/": f"\\frac{{{a}}}{{{b}}}", "**": f"{{{a}}}^{{{b}}}",
                 "%": f"{a} \\bmod {b}"}.get(ir[1], f"{a} {ir[1]} {b}")
        steps.append(_tex(value, shape + " = {}"))
    else:
        steps.append(_tex(value, ir_latex(ir) + " = {}"))
    approx = ""
    if value.is_number and not value.is_Integer and value.is_finite and value.is_real:
        approx = str(sp.N(value, 15))
        if "." in approx and "e" not in approx and "I" not in approx:
            approx = approx.rstrip("0").rstrip(".")
        steps.append(f"≈ {approx}")
    ok = False
    if value.is_number and value.is_finite:
        try:
            ok = abs(complex(build(ir, numeric=True).evalf(30)) - complex(sp.N(value, 30))) \
                <= 1e-20 * max(1.0, abs(complex(sp.N(value, 30))))
        except (TypeError, ValueError, OverflowError):
            ok = False
    elif not value.is_number:
        ok = _same(build(ir, numeric=True), value)
    said = f" (≈ {approx}{job.get('unit', '')})" if approx else f" {_gloss(value)}".rstrip()
    if job.get("label"):  # "15% of 240": the question's own words, never Markdown
        label = job["label"].replace("**", "^").replace("*", "·")
        answer = f"{label} = " + _tex(value, "{}" + (r"\%" if job.get("unit") == "%" else ""))
    elif value.is_number:
        answer = _tex(value, ir_latex(ir) + " = {}")
    else:  # "x sin x" alone: say what can be done with it
        answer = _tex(value)
        said += ". Ask me to simplify, factor, expand, differentiate, integrate or solve it"
    return "evaluate", shown, value, steps, ok, answer + said + "."


def _matrix(job, m, shown):
    import sympy as sp

    from agents.tools.math_parse import build, ir_latex
    mop = job.get("mop") or ""
    if not isinstance(m, sp.MatrixBase):
        raise MathError(f"The {mop or 'matrix operation'} needs a matrix such as [[1,2],[3,4]].")
    square = m.rows == m.cols
    if mop in ("determinant", "inverse", "eigenvalues", "trace") and not square:
        raise MathError(f"The {mop} is only defined for square matrices (this one is {m.rows}×{m.cols}).")
    if mop == "determinant":
        res = m.det(method="bareiss")
        a, b, c, d = (sp.latex(v) for v in m[:4]) if m.shape == (2, 2) else ("",) * 4
        steps = ([_tex(res, rf"\det A = ad - bc = {a} \cdot {d} - {b} \cdot {c} = {{}}")] if m.shape == (2, 2)
                 else ["Row-reduce (Bareiss algorithm) to get " + _tex(res, r"\det A = {}")])
        ok = _same(m.det(method="berkowitz"), res)
    elif mop == "inverse":
        det = m.det()
        if det == 0:
            raise MathError("The matrix is singular (determinant 0), so it has no inverse.")
        res = m.inv()
        steps = [_tex(det, r"\det A = {} \neq 0") + ", so the matrix is invertible",
                 "Swap a and d, negate b and c, divide by det" if m.shape == (2, 2)
                 else "Gauss–Jordan elimination on [A | I]", _tex(res, "A^{-1} = {}")]
        ok = _same(m * res, sp.eye(m.rows))
    elif mop == "transpose":
        res, steps = m.T, ["Swap rows and columns"]
        ok = all(m[i, j] == res[j, i] for i in range(m.rows) for j in range(m.cols))
    elif mop == "eigenvalues":
        lam = sp.Symbol("lambda")
        poly = sp.factor(m.charpoly(lam).as_expr())
        res = sorted((v for v, k in m.eigenvals().items() for _ in range(k)), key=sp.default_sort_key)
        steps = ["Characteristic polynomial " + _tex(poly, r"\det(A - \lambda I) = {}"),
                 "Its roots: " + ", ".join(_tex(v) for v in res)]
        ok = all(_zero((m - v * sp.eye(m.rows)).det()) for v in res)
    elif mop == "rank":
        res = sp.Integer(m.rank())
        steps, ok = [f"Row-reduce to echelon form: {_tex(res)} pivot(s)"], m.T.rank() == res
    elif mop == "trace":
        res = m.trace()
        diagonal = " + ".join(sp.latex(m[i, i]) for i in range(m.rows))
        steps, ok = [f"Add the diagonal entries: {_tex(res, diagonal + ' = {}')}"], True
    else:
        res, steps = m, [_tex(m, ir_latex(job["expr"]) + " = {}")]
        ok = _same(build(job["expr"], numeric=True), m)
    if not mop:
        return "matrix", shown, res, steps, ok, _tex(res, ir_latex(job["expr"]) + " = {}", display=True)
    shown_res = ", ".join(_tex(v) for v in res) if mop == "eigenvalues" else _tex(res, display=True)
    what = f"The {mop} of {_tex(m)} {'are' if mop == 'eigenvalues' else 'is'}"
    return "matrix", shown, res, steps, ok, f"{what} {shown_res}" if mop == "eigenvalues" else what + shown_res


_OPS = {"integrate": _integrate, "differentiate": _differentiate, "simplify": _simplify, "expand": _expand,
        "factor": _factor, "limit": _limit, "series": _series, "evaluate": _evaluate}
