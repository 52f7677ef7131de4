"""The math agent: exact answers with SymPy, parsed through a whitelist (agents/tools/math.py).

Quality rule: 1.0 when the result was verified independently (substitution, differentiating
back, numeric check), 0.6 when answered but unverified, 0.0 when no answer could be given.
"""

from agents.core import NOTHING_ELSE, Agent, RunContext, Tool, ToolFailed, ToolOutcome
from agents.registry import register
from agents.tools.math import MathError, solve_math


async def _calculate(arguments: dict, ctx: RunContext) -> ToolOutcome:
    expression = str(arguments.get("expression", ""))
    try:
        result = await solve_math(expression)
    except MathError as error:
        raise ToolFailed(error.message) from None
    ctx.facts["math"] = result
    steps = "\n".join(f"- {step}" for step in result.steps)
    return ToolOutcome(output=f"{result.operation}: {result.result}\n{steps}".strip(),
                       data={"result": result.result, "verified": result.verified, "latex": result.latex})


CALCULATOR = Tool(
    name="calculator",
    description=("Exact symbolic math with SymPy: solve equations, simplify, expand, factor, integrate, "
                 "differentiate, limits, series, matrices and arithmetic. Pass the question or expression, "
                 "e.g. 'integrate x^2', 'solve x^2-5x+6=0', 'determinant of [[1,2],[3,4]]'."),
    parameters={"type": "object", "properties": {"expression": {"type": "string"}}, "required": ["expression"]},
    call=_calculate,
    depends_on=NOTHING_ELSE,
)


@register
class MathAgent(Agent):
    name = "math"
    title = "Math"
    description = "Exact math with steps: equations, calculus, algebra, matrices (SymPy)."
    tools = [CALCULATOR]
    examples = ["integrate x^2 sin x", "solve x^2-5x+6=0", "derivative of e^(2x)", "what is 15% of 240",
                "factor x^3 - 8", "limit of sin x / x as x -> 0"]
    without_model = "Exact answers with steps from SymPy; it needs no model."
    system_prompt = ("You are Relay's math agent. Use the calculator tool for every computation and give the "
                     "exact result with brief steps.")

    async def answer_locally(self, ctx):
        async for event in ctx.use(CALCULATOR, {"expression": ctx.query}):
            yield event
        outcome = ctx.last_outcome
        if not outcome.ok:
            yield f"I couldn't compute that: {outcome.output}"
            return
        result = ctx.facts["math"]
        yield result.answer_text
        if result.steps:
            yield "\n\nSteps:\n" + "\n".join(f"{n}. {step}" for n, step in enumerate(result.steps, 1))

    def quality(self, ctx, answer):
        result = ctx.facts.get("math")
        if result is None:
            return 0.0
        return 1.0 if result.verified else 0.6
