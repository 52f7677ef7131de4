"""The embedded engine understands how people type (issue 20), through /api/v1/query with no model.

Results are checked for mathematical equivalence with SymPy (an antiderivative up to a constant),
never as strings; the answers carry LaTeX between Markdown math delimiters.
"""

import pytest
import sympy as sp
from django.urls import reverse

from agents.kinds.general import greeting
from agents.models import Message
from agents.registry import get_agent

pytestmark = pytest.mark.django_db
x = sp.Symbol("x")


def ask(client, agent, query, **extra):
    response = client.post(reverse("query"), {"query": query, "agent_type": agent, **extra}, format="json")
    assert response.status_code == 200, response.content
    return response.json()


def computed(answer) -> tuple[str, object]:
    """The calculator's operation and exact result, from its tool call (plain SymPy syntax)."""
    done = [call for call in answer["tool_calls"] if call["status"] == "done"]
    assert done, answer
    operation, _, result = done[-1]["output"].splitlines()[0].partition(": ")
    return operation, sp.sympify(result)  # the engine's own output, in a test: trusted


def same(a, b) -> bool:
    return sp.simplify(sp.sympify(a) - sp.sympify(b)) == 0


ANTIDERIVATIVES = [
    ("integrate x^2 sin x", x**2 * sp.sin(x), -x**2 * sp.cos(x) + 2 * x * sp.sin(x) + 2 * sp.cos(x)),
    ("integral of x sin x", x * sp.sin(x), sp.sin(x) - x * sp.cos(x)),
    ("antiderivative of x e^x", x * sp.exp(x), (x - 1) * sp.exp(x)),
    ("integrate xe^x dx", x * sp.exp(x), (x - 1) * sp.exp(x)),
    ("∫ x² sin x dx", x**2 * sp.sin(x), -x**2 * sp.cos(x) + 2 * x * sp.sin(x) + 2 * sp.cos(x)),
    ("What is the integral of 2x cos(x^2)?", 2 * x * sp.cos(x**2), sp.sin(x**2)),
    ("integrate 3x^2 + 2x", 3 * x**2 + 2 * x, x**3 + x**2),
]


@pytest.mark.parametrize("query, integrand, expected", ANTIDERIVATIVES, ids=[q for q, *_ in ANTIDERIVATIVES])
def test_integrals_as_people_type_them(users, client_for, query, integrand, expected):
    answer = ask(client_for(users["user"]), "math", query)
    operation, result = computed(answer)
    assert operation == "integrate"
    assert same(sp.diff(result, x), integrand)
    assert not sp.simplify(result - expected).free_symbols  # equal up to the constant of integration
    assert "$$" in answer["answer"] and "+ C$$" in answer["answer"]
    assert Message.objects.get(pk=answer["message_id"]).quality_score == 1.0  # verified by the engine


EXACT = [
    ("derivative of e^(2x)", "differentiate", 2 * sp.exp(2 * x)),
    ("differentiate x sin x", "differentiate", x * sp.cos(x) + sp.sin(x)),
    ("d/dx x^3", "differentiate", 3 * x**2),
    ("d/dx of ln x", "differentiate", 1 / x),
    ("derivative of sin^2 x", "differentiate", 2 * sp.sin(x) * sp.cos(x)),
    ("find the derivative of cos 2x", "differentiate", -2 * sp.sin(2 * x)),
    ("what is 15% of 240", "evaluate", 36),
    ("15 percent of 240", "evaluate", 36),
    ("what's 20% of 50?", "evaluate", 10),
    ("36 is what percent of 240", "evaluate", 15),
    ("what is 2 + 2", "evaluate", 4),
    ("what is 3 times 4 plus 2", "evaluate", 14),
    ("2^10", "evaluate", 1024),
    ("7 mod 3", "evaluate", 1),
    ("sqrt 16", "evaluate", 4),
    ("simplify sin^2 x + cos^2 x", "simplify", 1),
    ("simplify (x^2-1)/(x-1)", "simplify", x + 1),
    ("factor x^2 + 5x + 6", "factor", (x + 2) * (x + 3)),
    ("expand (x+2)(x-3)", "expand", x**2 - x - 6),
    ("factor a^2 - b^2", "factor", (sp.Symbol("a") - sp.Symbol("b")) * (sp.Symbol("a") + sp.Symbol("b"))),
    ("root of 16", "evaluate", 4),
    ("square root of 16 plus 9", "evaluate", 13),
    ("limit of sin x / x as x -> 0", "limit", 1),
]


@pytest.mark.parametrize("query, operation, expected", EXACT, ids=[q for q, *_ in EXACT])
def test_derivatives_percentages_and_algebra(users, client_for, query, operation, expected):
    answer = ask(client_for(users["user"]), "math", query)
    got_operation, result = computed(answer)
    assert got_operation == operation
    assert same(result, expected)
    assert "$" in answer["answer"]
    assert Message.objects.get(pk=answer["message_id"]).quality_score == 1.0


def test_factor_and_expand_give_the_form_asked_for(users, client_for):
    client = client_for(users["user"])
    assert computed(ask(client, "math", "factor x^2 + 5x + 6"))[1].is_Mul
    assert computed(ask(client, "math", "expand (x+2)(x-3)"))[1].is_Add


EQUATIONS = [
    ("solve x^2-5x+6=0", {2, 3}),
    ("roots of x^2 - 4", {-2, 2}),
    ("solve 2x + 3 = 7", {2}),
    ("solve for x: 3x - 7 = 2", {3}),
    ("what are the zeros of x^2 - 2x", {0, 2}),
]


@pytest.mark.parametrize("query, roots", EQUATIONS, ids=[q for q, _ in EQUATIONS])
def test_equations(users, client_for, query, roots):
    answer = ask(client_for(users["user"]), "math", query)
    operation, result = computed(answer)
    assert operation == "solve" and set(result) == roots
    for root in roots:
        assert f"$x = {root}$" in answer["answer"]


def test_the_answer_is_latex_between_markdown_math_delimiters(users, client_for):
    answer = ask(client_for(users["user"]), "math", "integrate x^2 sin x")["answer"]
    display = answer.split("$$")[1]
    assert display == (r"\int x^{2} \sin{\left(x \right)}\, dx = - x^{2} \cos{\left(x \right)} "
                       r"+ 2 x \sin{\left(x \right)} + 2 \cos{\left(x \right)} + C")
    assert answer.startswith(r"The integral of $x^{2} \sin{\left(x \right)}$ with respect to $x$ is")
    assert "**" not in answer.replace("\\", "")  # no SymPy syntax left for Markdown to misread as bold


HOSTILE = [
    ("9^9^9^9", "digits"),
    ("2^(10^10)", "digits"),
    ("factorial(10^6)", "factorial"),
    ("x" * 10_000, "too long"),
    ("integrate " + "sin " * 490 + "x", "nested"),
    ("expand (x+1)^100000", "too large"),
    ("__import__('os').system('id')", "underscores"),
    ("().__class__.__bases__[0]", "Attribute access"),
    ("x.__class__", "Attribute"),
    ("lambda: 1", "know the name"),
    ("😀 + 1", "Unsupported character"),
    ("x\u202e+1", "invisible"),
    ("what is the meaning of life", "know the name"),
]


@pytest.mark.parametrize("query, reason", HOSTILE, ids=[q[:30] for q, _ in HOSTILE])
def test_hostile_and_unreadable_input_gets_a_clear_refusal(users, client_for, query, reason):
    answer = ask(client_for(users["user"]), "math", query)
    assert answer["tool_calls"][-1]["status"] == "error"
    assert answer["answer"].startswith("I couldn't compute that: ") and reason in answer["answer"], answer["answer"]
    assert answer["status"] == "complete"


@pytest.mark.parametrize("query", get_agent("math").examples)
def test_every_advertised_math_example_is_answered_and_verified(users, client_for, query):
    answer = ask(client_for(users["user"]), "math", query)
    assert answer["tool_calls"][-1]["status"] == "done"
    assert Message.objects.get(pk=answer["message_id"]).quality_score == 1.0


# ---------------------------------------------------------------- the general agent

@pytest.mark.parametrize("query, opener", [
    ("hi", "Hello!"), ("Hello", "Hello!"), ("hey there!", "Hello!"), ("Good morning", "Hello!"),
    ("good evening, how are you?", "Hello!"), ("thanks", "You're welcome!"), ("Thank you so much!", "You're welcome!"),
    ("bye", "Goodbye"),
])
def test_a_greeting_gets_a_greeting_and_what_works_here(users, client_for, query, opener):
    answer = ask(client_for(users["user"]), "general", query)
    text = answer["answer"]
    assert text.startswith(opener)
    assert "documentation has nothing" not in text and not answer["tool_calls"]  # no docs search for "hi"
    assert "No language model is configured" in text
    assert "**Math**" in text and "integrate x^2 sin x" in text and "**Code**" in text
    assert Message.objects.get(pk=answer["message_id"]).quality_score == 0.8


def test_the_greeting_lists_only_what_the_caller_may_use_and_is_never_cached(users, client_for):
    # Same organization, same readable documents: one cache key. The user's greeting must not
    # be replayed to the viewer, who may not use the math or code agents.
    assert "**Math**" in ask(client_for(users["user"]), "general", "hello")["answer"]
    viewer = ask(client_for(users["viewer"]), "general", "hello")["answer"]
    assert viewer.startswith("Hello!") and "**Math**" not in viewer and "**Code**" not in viewer
    assert "**Documents (RAG)**" in viewer


def test_math_sent_to_the_general_agent_points_to_the_math_agent(users, client_for):
    assert "the **Math** agent" in ask(client_for(users["user"]), "general", "integrate x^2 sin x")["answer"]
    viewer = ask(client_for(users["viewer"]), "general", "integrate x^2 sin x")["answer"]
    assert "the **Math** agent" not in viewer


@pytest.mark.parametrize("text", [
    "hi, how do budgets work?", "hello world program in python", "thanks but that is wrong", "history of the yo-yo",
    "hi" * 50, "good", "",
])
def test_only_a_plain_greeting_counts_as_one(text):
    assert greeting(text) is None


def test_agents_list_their_examples_and_what_works_without_a_model(users, client_for):
    listed = {a["name"]: a for a in client_for(users["user"]).get(reverse("agent-list")).json()}
    assert set(listed) == {"math", "code", "rag", "vision", "general"}
    assert "integrate x^2 sin x" in listed["math"]["examples"]
    for agent in listed.values():
        assert agent["examples"] and all(isinstance(e, str) and e for e in agent["examples"])
        assert agent["without_model"]
    assert "writing code" in listed["code"]["without_model"].lower()
