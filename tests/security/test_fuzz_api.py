"""Schemathesis against the live OpenAPI schema: no 5xx, answers match the schema, errors use the envelope.

Bounded for CI: a few examples per operation and an overall time budget (RELAY_FUZZ_EXAMPLES,
RELAY_FUZZ_SECONDS). Authenticated as an organization admin through an API key, so endpoints
are exercised beyond their 401.
"""

import os
import time

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, assume, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error, response_schema_conformance

from accounts.services import create_api_key

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


@pytest.mark.slow
def test_the_api_survives_fuzzing_of_its_whole_schema(asgi_server, users):
    admin = users["admin"]
    issued = create_api_key(admin, "fuzzer")
    headers = {"Authorization": f"Bearer {issued.secret}"}
    protected_ids = {str(issued.key.pk), str(admin.pk)}
    schema = schemathesis.openapi.from_url(f"{asgi_server.url}/api/schema/")
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
