"""The code agent: runs Python in the sandbox (agents/sandbox.py) and reports what happened.

Quality rule: 1.0 when the code ran and exited 0 with nothing on stderr, 0.7 exit 0 with
stderr output, 0.4 for a non-zero exit, 0.2 when killed by a limit, 0.0 when it could not run.
"""

import ast
import re

from agents import heavy
from agents.core import NOTHING_ELSE, Agent, RunContext, Tool, ToolFailed, ToolOutcome
from agents.registry import register
from agents.sandbox import SandboxLimits, SandboxUnavailable, run_python

_FENCE = re.compile(r"```(?:python|py)?[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)


def extract_code(query: str) -> str | None:
    """The Python in a question: a fenced block, or the whole text when it parses as Python."""
    fenced = _FENCE.search(query)
    if fenced:
        return fenced.group(1)
    text = query.strip()
    # RecursionError and MemoryError too: "1+1+...+1" or "---...1" is too deep for CPython to build
    # (so to run), and this runs in heavy.admit_run, before the runner turns errors into answers.
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    # A bare name or constant ("hello") parses too, but is not a program anyone asked to run.
    if all(isinstance(node, ast.Expr) and isinstance(node.value, (ast.Name, ast.Constant)) for node in tree.body):
        return None
    return text


async def _run(arguments: dict, ctx: RunContext) -> ToolOutcome:
    code = str(arguments.get("code", ""))
    if not code.strip():
        raise ToolFailed("There is no code to run.")
    try:
        async with heavy.heavy_slot(ctx.user, admitted=ctx.heavy_lease):
            result = await run_python(code, limits=SandboxLimits(wall_seconds=10, cpu_seconds=5))
    except SandboxUnavailable as error:
        raise ToolFailed(str(error)) from None
    except heavy.Busy as busy:  # mid-stream: no 429 any more, the tool call fails and says why
        raise ToolFailed(f"busy: {busy.detail}") from None
    ctx.facts["code"] = result
    parts = [f"exit status: {result.exit_code if result.exit_code is not None else 'killed'}"]
    if result.killed_reason:
        parts.append(f"stopped: {result.killed_reason} limit")
    if result.stdout:
        parts.append(f"stdout:\n{result.stdout}")
    if result.stderr:
        parts.append(f"stderr:\n{result.stderr}")
    ok = result.exit_code == 0
    return ToolOutcome(output="\n".join(parts), ok=ok,
                       data={"stdout": result.stdout, "stderr": result.stderr, "exit_code": result.exit_code})


RUN_PYTHON = Tool(
    name="run_python",
    description="Run a Python 3 program in an isolated sandbox (no network, 10 s) and return stdout, stderr and "
                "the exit status. Print what you want to see.",
    parameters={"type": "object", "properties": {"code": {"type": "string"}}, "required": ["code"]},
    call=_run,
    depends_on=NOTHING_ELSE,  # the sandbox sees no caller data: no network, no files of theirs
)


@register
class CodeAgent(Agent):
    name = "code"
    title = "Code"
    description = "Runs Python in a sandbox and shows its output."
    tools = [RUN_PYTHON]
    examples = ["print(sum(range(1, 101)))", "import math\nprint(math.factorial(20))",
                "for n in range(1, 6):\n    print(n, n ** 2)"]
    without_model = "Runs the Python you give it in the sandbox; writing code from a description needs a model."
    system_prompt = ("You are Relay's code agent. Write Python and run it with the run_python tool; report the "
                     "output faithfully.")

    def runs_heavy_work(self, query, attachment):
        return extract_code(query) is not None

    async def answer_locally(self, ctx):
        code = extract_code(ctx.query)
        if code is None:
            yield ("I run Python code. Send a program (or a ```python block) and I'll run it in the sandbox and show "
                   "its output. Writing code from a description needs a language model, and none is configured.")
            return
        async for event in ctx.use(RUN_PYTHON, {"code": code}):
            yield event
        result = ctx.facts.get("code")
        if result is None:
            yield f"I couldn't run the code: {ctx.last_outcome.output}"
            return
        yield _describe(result)

    def quality(self, ctx, answer):
        result = ctx.facts.get("code")
        if result is None:
            return 0.0
        if result.killed_reason:
            return 0.2
        if result.exit_code != 0:
            return 0.4
        return 0.7 if result.stderr.strip() else 1.0


def _describe(result) -> str:
    if result.killed_reason:
        head = f"The program was stopped by the sandbox's {result.killed_reason} limit."
    elif result.exit_code == 0:
        head = "The program ran successfully."
    else:
        head = f"The program exited with status {result.exit_code}."
    parts = [head]
    if result.stdout:
        parts.append("Output:\n```\n" + result.stdout.rstrip("\n") + "\n```")
    elif result.exit_code == 0:
        parts.append("It printed nothing.")
    if result.stderr:
        parts.append("Errors:\n```\n" + result.stderr.rstrip("\n")[-2000:] + "\n```")
    if result.output_truncated:
        parts.append("(Output was cut at the sandbox's limit.)")
    return "\n\n".join(parts)
