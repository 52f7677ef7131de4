"""Schemathesis against the live OpenAPI schema: no 5xx, answers match the schema, errors use the envelope.

Bounded for CI: a few examples per operation and an overall time budget (RELAY_FUZZ_EXAMPLES,
RELAY_FUZZ_SECONDS). Authenticated as an organization admin through an API key, so endpoints
are exercised beyond their 401. Besides what the schema describes, every operation that takes a
body also gets the shapes clients have broken Relay with (HOSTILE_VALUES, RAW_BODIES): JSON
nested deeper than the parser's limit, lone surrogates, NaN, digits of other scripts, money
below a nano-dollar, OpenAI content parts of the wrong type, and bodies of unknown length past
the size limit.
"""

import json
import os
import time

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, assume, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error, response_schema_conformance
from schemathesis.core import NOT_SET

from accounts.actions.keys import create_api_key

EXAMPLES = int(os.environ.get("RELAY_FUZZ_EXAMPLES", "25"))
BUDGET_SECONDS = float(os.environ.get("RELAY_FUZZ_SECONDS", "150"))
# The OpenAI-compatible API answers errors in OpenAI's shape ({"error": {"message", "type", "code"}}).
OPENAI_PREFIX = "/v1/"


def envelope_problem(response, path: str) -> str | None:
    if response.status_code < 400:
        return None
    try:
        body = response.json()
    except ValueError:
        return f"{response.status_code} is not JSON: {response.text[:200]!r}"
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict) or not isinstance(error.get("message"), str):
        return f"{response.status_code} without the error envelope: {str(body)[:200]}"
    if not path.startswith(OPENAI_PREFIX) and (set(body) != {"error"} or not isinstance(error.get("code"), str)):
        return f"{response.status_code} envelope malformed: {str(body)[:200]}"
    return None


def fuzz_operation(operation, base_url, headers, protected_ids, problems):
    # Valid input (reaches the logic) and deliberately invalid input (must be a 4xx, never a 500).
    strategy = st.one_of(operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE))

    @hsettings(max_examples=EXAMPLES, deadline=None, phases=[Phase.explicit, Phase.generate], database=None,
               suppress_health_check=list(HealthCheck), derandomize=True)
    @given(case=strategy)
    def run(case):
        # Never revoke/rotate/deactivate the credential doing the fuzzing.
        assume(str((case.path_parameters or {}).get("id")) not in protected_ids)
        response = case.call(base_url=base_url, headers=headers, timeout=30)
        label = f"{case.method} {case.formatted_path}"
        case.validate_response(response, checks=[not_a_server_error, response_schema_conformance])
        problem = envelope_problem(response, case.formatted_path)
        assert problem is None, f"{label}: {problem}"

    try:
        run()
    except (Exception, BaseExceptionGroup) as failure:  # noqa: BLE001 - collect all operations' failures
        problems.append(f"{operation.label}: {str(failure)[:1500]}")


def _fuzzing_as_admin(asgi_server, users):
    """(headers of an admin's key, the ids a fuzzer must not delete, the live schema)."""
    admin = users["admin"]
    issued = create_api_key(admin, "fuzzer")
    schema = schemathesis.openapi.from_url(f"{asgi_server.url}/api/schema/")
    return {"Authorization": f"Bearer {issued.secret}"}, {str(issued.key.pk), str(admin.pk)}, schema


@pytest.mark.slow
def test_the_api_survives_fuzzing_of_its_whole_schema(asgi_server, users):
    headers, protected_ids, schema = _fuzzing_as_admin(asgi_server, users)
    problems, started, ran = [], time.monotonic(), 0
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.path.endswith("/logout/") or time.monotonic() - started > BUDGET_SECONDS:
            continue
        fuzz_operation(operation, asgi_server.url, headers, protected_ids, problems)
        ran += 1
    print(f"fuzzed {ran} operations in {time.monotonic() - started:.0f}s")
    assert ran >= 20, f"only {ran} operations fuzzed within {BUDGET_SECONDS}s"
    assert not problems, "\n\n".join(problems)


# --- hostile shapes ---------------------------------------------------------------------------

JSON_LIMIT = 64  # relay.api.parsers.MAX_JSON_DEPTH
DEEP = 10_000


def nested(depth: int):
    value = 1
    for _ in range(depth):
        value = [value]
    return value


# Never a money amount: other scripts' digits (Python's Decimal reads "٥" as 5), below or finer
# than a nano-dollar, negative, huge, not finite (NaN and inf are sent as their JSON literals).
BAD_MONEY = ["٥", "５", "١٠.٠٠", "1_000", "1e-10", 1e-10, "0.0000000001", "10.0000000005", -1, "9" * 60, 10**30,
             float("nan"), float("inf")]
# Put in place of any part of a generated valid body (or of the whole body).
HOSTILE_VALUES = st.one_of(
    st.sampled_from([
        "\ud800", "a\udfffb", "\ud83d", {"\udc00": 1},  # lone surrogates (sent as JSON escapes)
        *BAD_MONEY,
        {"type": "text", "text": 5}, [{"type": "text", "text": 5}], [{"text": "x"}], [5], 5, True, None,
    ]),
    st.integers(JSON_LIMIT + 1, 400).map(nested),
)
RAW_BODIES = {
    "list nested 10,000 deep": "[" * DEEP + "]" * DEEP,
    "object nested 10,000 deep": '{"a":' * DEEP + "1" + "}" * DEEP,
    "a NaN literal": '{"query": NaN, "limit_usd": NaN}',
    "a lone surrogate": '{"query": "\\ud800", "name": "\\udfff", "messages": [{"role": "user", "content": "\\ud800"}]}',
    "not UTF-8": b'{"query": "\xff\xfe"}',
    "a text part that is a number": '{"model": "relay-math", "messages": [{"role": "user", "content": '
                                    '[{"type": "text", "text": 5}]}]}',
    "money in Arabic-Indic digits": '{"scope": "organization", "period": "monthly", "limit_usd": "٥"}',
    "money below a nano-dollar": '{"scope": "organization", "period": "monthly", "limit_usd": "1e-10"}',
}


def body_paths(value, path=()):
    yield path
    if isinstance(value, dict):
        for key, child in value.items():
            yield from body_paths(child, (*path, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield from body_paths(child, (*path, index))


def replaced(value, path, new):
    if not path:
        return new
    copy = dict(value) if isinstance(value, dict) else list(value)
    copy[path[0]] = replaced(value[path[0]], path[1:], new)
    return copy


def takes_a_body(operation) -> bool:
    return operation.method.upper() in ("POST", "PUT", "PATCH") and operation.body


def refusal_problem(response, label: str) -> str | None:
    if response.status_code >= 500:
        return f"{label}: {response.status_code} {response.text[:300]!r}"
    problem = envelope_problem(response, label.split(" ", 1)[1])
    return f"{label}: {problem}" if problem else None


def fuzz_hostile_bodies(operation, base_url, headers, protected_ids, problems):
    """Valid generated bodies with one part (or all) replaced by a hostile value, sent as JSON."""
    import httpx

    @hsettings(max_examples=EXAMPLES, deadline=None, phases=[Phase.generate], database=None,
               suppress_health_check=list(HealthCheck), derandomize=True)
    @given(case=operation.as_strategy(GenerationMode.POSITIVE), data=st.data())
    def run(case, data):
        assume(str((case.path_parameters or {}).get("id")) not in protected_ids)
        body = case.body if case.body is not NOT_SET and isinstance(case.body, dict | list) else {}
        path = data.draw(st.sampled_from(list(body_paths(body))), label="path")
        hostile = data.draw(HOSTILE_VALUES, label="hostile")
        body = replaced(body, path, hostile)
        response = httpx.request(case.method, base_url + case.formatted_path, params=case.query or None,
                                 content=json.dumps(body, allow_nan=True).encode(), timeout=30,
                                 headers={**headers, "Content-Type": "application/json"})
        label = f"{case.method} {case.formatted_path} {json.dumps(body)[:200]}"
        problem = refusal_problem(response, label)
        assert problem is None, problem
        if path and str(path[-1]).endswith("_usd") and any(hostile is bad for bad in BAD_MONEY):
            assert response.status_code == 400, f"{label}: bad money got {response.status_code}"

    try:
        run()
    except (Exception, BaseExceptionGroup) as failure:  # noqa: BLE001 - collect all operations' failures
        problems.append(f"{operation.label}: {str(failure)[:1500]}")


def chunked(total: int, piece: int = 256 * 1024):
    """A body of unknown length (Transfer-Encoding: chunked): httpx sends no Content-Length."""
    for start in range(0, total, piece):
        yield b"x" * min(piece, total - start)


def send_raw_bodies(operation, base_url, headers, problems):
    """Bodies no generator writes (each a 4xx everywhere: none is a valid body anywhere), and too large."""
    import httpx
    from django.conf import settings

    upload = operation.body and all(body.media_type.startswith("multipart/") for body in operation.body)
    label = f"{operation.method.upper()} {operation.path}"
    with httpx.Client(base_url=base_url, headers=headers, timeout=60) as client:
        if not upload:
            for name, raw in RAW_BODIES.items():
                response = client.request(operation.method, operation.path, content=raw,
                                          headers={"Content-Type": "application/json"})
                if problem := refusal_problem(response, label) or (
                        response.status_code < 400 and f"{label}: {response.status_code}, expected a 4xx"):
                    problems.append(f"{problem} (sent {name})")
        kind = "multipart/form-data; boundary=relay" if upload else "application/json"
        # Chat completions carry images inline: its JSON may be as large as an upload (design §5).
        upload_sized = upload or operation.path == "/v1/chat/completions"
        limit = settings.RELAY_MAX_UPLOAD_BYTES if upload_sized else settings.RELAY_MAX_BODY_BYTES
        response = client.request(operation.method, operation.path, content=chunked(limit + 2**20),
                                  headers={"Content-Type": kind})
        if response.status_code != 413 or (problem := refusal_problem(response, label)):
            problems.append(f"{label}: chunked body past the limit got {response.status_code} {response.text[:200]!r}")


@pytest.mark.slow
def test_hostile_shapes_get_a_4xx_on_every_operation_with_a_body(asgi_server, users):
    headers, protected_ids, schema = _fuzzing_as_admin(asgi_server, users)
    problems, started, ran = [], time.monotonic(), 0
    for result in schema.get_all_operations():
        operation = result.ok()
        if not takes_a_body(operation) or time.monotonic() - started > BUDGET_SECONDS:
            continue
        if "{" not in operation.path:  # raw bodies need a concrete path
            send_raw_bodies(operation, asgi_server.url, headers, problems)
        if any(body.media_type == "application/json" for body in operation.body):
            fuzz_hostile_bodies(operation, asgi_server.url, headers, protected_ids, problems)
        ran += 1
    print(f"sent hostile shapes to {ran} operations in {time.monotonic() - started:.0f}s")
    assert ran >= 12, f"only {ran} operations with a body reached within {BUDGET_SECONDS}s"
    assert not problems, "\n\n".join(problems)
