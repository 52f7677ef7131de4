"""Every bad input is a 4xx with the envelope, on every endpoint and transport; never a 500.

Hostile shapes a client can send whatever the schema says: JSON nested thousands deep, lone
UTF-16 surrogates, parts of the wrong type, bodies of unknown length, money in other scripts.
"""

import asyncio
import json

import pytest
import websockets
from django.urls import reverse

from accounts.actions.keys import create_api_key
from tests.conftest import assert_envelope

DEEP = 10_000
JSON_LIMIT = 64  # relay.api.parsers.MAX_JSON_DEPTH
# url name, and whether it answers in OpenAI's error shape
JSON_ENDPOINTS = [("query", False), ("stream", False), ("openai-chat-completions", True), ("costs-budget", False),
                  ("apikey-list", False)]
# A body each endpoint accepts, to carry a nested value in an extra field.
VALID = {
    "query": {"query": "1+1", "agent_type": "math"},
    "stream": {"query": "1+1", "agent_type": "math"},
    "openai-chat-completions": {"model": "relay-math", "messages": [{"role": "user", "content": "1+1"}]},
    "costs-budget": {"scope": "organization", "period": "monthly", "limit_usd": "10.00"},
    "apikey-list": {"name": "nested"},
}


def nested_list(depth: int) -> str:
    return "[" * depth + "1" + "]" * depth


def nested_object(depth: int) -> str:
    return '{"a":' * depth + "1" + "}" * depth


# The OpenAI body ignores unknown fields; its `n` must be an integer, so a list there is refused.
EXTRA_FIELD = {"openai-chat-completions": "n"}


def with_extra(name: str, depth: int) -> str:
    """The endpoint's valid body plus a field holding lists: `depth` levels in all, the body included."""
    return with_extra_frame(VALID[name], depth, EXTRA_FIELD.get(name, "extra"))


@pytest.fixture
def caller(users, client_for):
    client = client_for(users["admin"], via="api_key")
    client.raise_request_exception = False  # a 500 must show as a 500, as a real client sees it
    return client


def post_raw(client, name: str, body: str | bytes):
    return client.generic("POST", reverse(name), body, content_type="application/json")


def refused(response, openai: bool, status: int = 400, code: str | None = None) -> dict:
    """The 4xx in Relay's envelope, or in OpenAI's shape on /v1."""
    if not openai:
        return assert_envelope(response, status, code)
    assert response.status_code == status, (response.status_code, response.content[:300])
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and isinstance(error["message"], str), error
    assert error["type"] == "invalid_request_error", error
    if code is not None:
        assert error["code"] == code, error
    return error


# --- (a) nesting ------------------------------------------------------------------------------

@pytest.mark.django_db
@pytest.mark.parametrize("shape", [nested_list, nested_object])
@pytest.mark.parametrize("name, openai", JSON_ENDPOINTS)
def test_json_nested_ten_thousand_deep_is_a_400(caller, name, openai, shape):
    # Control: relay.api.parsers.parse_json (the nesting limit), behind read_json and BoundedJSONParser.
    refused(post_raw(caller, name, shape(DEEP)), openai, 400, "malformed_request")


@pytest.mark.django_db
@pytest.mark.parametrize("name, openai", JSON_ENDPOINTS)
def test_one_nesting_limit_for_the_async_views_and_drf(caller, name, openai):
    # At the limit the body is parsed (and refused for its unknown field); one level more, it is not.
    at_limit = refused(post_raw(caller, name, with_extra(name, JSON_LIMIT)), openai, 400)
    assert at_limit["code"] == "invalid" and EXTRA_FIELD.get(name, "extra") in at_limit["message"], at_limit
    refused(post_raw(caller, name, with_extra(name, JSON_LIMIT + 1)), openai, 400, "malformed_request")


def ws_url(server) -> str:
    return server.url.replace("http://", "ws://") + "/ws/chat/"


async def recv_json(ws, timeout=20):
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


@pytest.mark.django_db(transaction=True)
def test_websocket_frames_nested_too_deep_get_an_error_and_the_socket_stays_usable(asgi_server, users):
    # Control: the consumer parses frames with the same relay.api.parsers.parse_json.
    key = create_api_key(users["user"], "deep").secret
    query = {"type": "query", "query": "1+1", "agent_type": "math"}

    async def scenario():
        async with websockets.connect(ws_url(asgi_server), max_size=2**22) as ws:
            await ws.send(json.dumps({"type": "auth", "token": key}))
            assert (await recv_json(ws))["type"] == "authenticated"
            replies = []
            for frame in (nested_list(DEEP), nested_object(DEEP), with_extra_frame(query, JSON_LIMIT + 1),
                          with_extra_frame(query, JSON_LIMIT)):
                await ws.send(frame)
                replies.append(await recv_json(ws))
            await ws.send(json.dumps(query))
            events = [await recv_json(ws)]
            while events[-1]["type"] != "done":
                events.append(await recv_json(ws))
            return replies, events

    replies, events = asyncio.run(scenario())
    assert [r["type"] for r in replies] == ["error"] * 4, replies
    assert [r["code"] for r in replies] == ["malformed_frame", "malformed_frame", "malformed_frame", "invalid"]
    assert events[-1]["status"] == "complete", events[-1]


def with_extra_frame(message: dict, depth: int, field: str = "extra") -> str:
    return json.dumps(message)[:-1] + f', "{field}": ' + nested_list(depth - 1) + "}"


# --- (b) lone surrogates, parts of the wrong type ---------------------------------------------

LONE_SURROGATES = ["\\ud800", "\\udfff", "a\\udc00b", "\\ud83d"]  # JSON escapes; "\\ud83d\\ude00" is fine


def raw_json(template: str, value: str) -> str:
    """The template with VALUE replaced by the raw JSON string literal (escapes kept as written)."""
    return template.replace("VALUE", '"' + value + '"')


@pytest.mark.django_db
@pytest.mark.parametrize("escape", LONE_SURROGATES)
@pytest.mark.parametrize("name, openai, template", [
    ("query", False, '{"query": VALUE, "agent_type": "math"}'),
    ("stream", False, '{"query": VALUE, "agent_type": "math"}'),
    ("openai-chat-completions", True, '{"model": "relay-math", "messages": [{"role": "user", "content": VALUE}]}'),
    ("openai-chat-completions", True,
     '{"model": "relay-math", "messages": [{"role": "user", "content": [{"type": "text", "text": VALUE}]}]}'),
    ("apikey-list", False, '{"name": VALUE}'),
])
def test_a_lone_surrogate_is_a_400(caller, name, openai, template, escape):
    # Control: relay.api.parsers.parse_json refuses strings that cannot be encoded as UTF-8 (DRF's
    # CharField refuses them too, but not inside the dicts and lists of the OpenAI body).
    refused(post_raw(caller, name, raw_json(template, escape)), openai, 400)


@pytest.mark.django_db
def test_a_surrogate_pair_is_an_ordinary_character(caller):
    body = raw_json('{"model": "relay-math", "messages": [{"role": "user", "content": VALUE}]}', "1+1 \\ud83d\\ude00")
    response = post_raw(caller, "openai-chat-completions", body)
    assert response.status_code == 200, response.content[:300]


@pytest.mark.django_db
@pytest.mark.parametrize("messages", [
    [{"role": "user", "content": [{"type": "text", "text": 5}]}],
    [{"role": "user", "content": [{"type": "text", "text": None}]}],
    [{"role": "user", "content": [{"type": "text", "text": ["1+1"]}]}],
    [{"role": "user", "content": [{"type": "text"}]}],
    [{"role": "user", "content": ["1+1"]}],
    [{"role": "user", "content": [{"text": "1+1"}]}],
    [{"role": "user", "content": [{"type": 5, "text": "1+1"}]}],
    [{"role": "user", "content": 5}],
    [{"role": "user", "content": {"text": "1+1"}}],
    [{"role": "user", "content": True}],
    [{"role": "user", "content": 5}, {"role": "user", "content": "1+1"}],  # an earlier message too
    [{"role": "system", "content": [{"type": "text", "text": 5}]}, {"role": "user", "content": "1+1"}],
])
def test_message_content_of_the_wrong_type_is_a_400_in_openais_shape(caller, messages):
    # Control: ChatCompletionSerializer.validate_messages checks each message's content and parts.
    body = json.dumps({"model": "relay-math", "messages": messages})
    error = refused(post_raw(caller, "openai-chat-completions", body), True, 400, "invalid")
    assert error["param"] == "messages" and "content" in error["message"], error


@pytest.mark.django_db
def test_content_parts_and_tool_turns_in_openais_format_still_work(caller):
    messages = [
        {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "calculator", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "4"},
        {"role": "user", "content": [{"type": "text", "text": "1+1"}]},
    ]
    response = post_raw(caller, "openai-chat-completions", json.dumps({"model": "relay-math", "messages": messages}))
    assert response.status_code == 200, response.content[:300]
    assert "2" in response.json()["choices"][0]["message"]["content"]
    # An image for an agent that cannot see is a clear 400 (as OpenAI's text models answer), not ignored.
    messages[-1]["content"].append({"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}})
    error = refused(post_raw(caller, "openai-chat-completions",
                             json.dumps({"model": "relay-math", "messages": messages})), True, 400, "invalid")
    assert error["param"] == "messages" and "relay-vision" in error["message"], error


@pytest.mark.django_db(transaction=True)
def test_websocket_frames_with_a_lone_surrogate_get_an_error_and_the_socket_stays_usable(asgi_server, users):
    key = create_api_key(users["user"], "surrogate").secret
    bad = raw_json('{"type": "query", "query": VALUE, "agent_type": "math"}', "1+1 \\ud800")

    async def scenario():
        async with websockets.connect(ws_url(asgi_server)) as ws:
            await ws.send(json.dumps({"type": "auth", "token": key}))
            assert (await recv_json(ws))["type"] == "authenticated"
            await ws.send(bad)
            reply = await recv_json(ws)
            await ws.send(json.dumps({"type": "query", "query": "1+1", "agent_type": "math"}))
            events = [await recv_json(ws)]
            while events[-1]["type"] != "done":
                events.append(await recv_json(ws))
            return reply, events

    reply, events = asyncio.run(scenario())
    assert reply["type"] == "error" and reply["code"] in ("malformed_frame", "invalid"), reply
    assert events[-1]["status"] == "complete", events[-1]


# --- (c) bodies of unknown length --------------------------------------------------------------

def chunked(total: int, head: bytes = b"", tail: bytes = b"", piece: int = 256 * 1024):
    """A body sent with Transfer-Encoding: chunked (a generator: httpx sends no Content-Length)."""
    yield head
    sent = 0
    while sent < total:
        yield b"x" * min(piece, total - sent)
        sent += piece
    yield tail


def multipart(field: str, total: int):
    head = (b'--relay\r\nContent-Disposition: form-data; name="' + field.encode()
            + b'"; filename="big.png"\r\nContent-Type: image/png\r\n\r\n')
    return chunked(total, head, b"\r\n--relay--\r\n")


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("path, kind", [
    ("/api/v1/query", "json"), ("/api/v1/stream", "json"), ("/v1/chat/completions", "json"),
    ("/api/v1/costs/budget", "json"), ("/api/v1/keys/", "json"),
    ("/api/v1/documents/", "upload"), ("/api/v1/vision/analyze", "upload"),
])
def test_an_oversized_chunked_body_is_a_413_without_an_error_log(asgi_server, users, settings, caplog, path, kind):
    # Control: relay.eventloop.handler bounds a body of unknown length while reading it; the size
    # middleware then refuses it like a declared one.
    import httpx

    key = create_api_key(users["admin"], "chunked").secret
    headers = {"Authorization": f"Bearer {key}"}
    if kind == "json":
        # Chat completions carry images inline: its JSON may be as large as an upload (design §5).
        limit = settings.RELAY_MAX_UPLOAD_BYTES if path == "/v1/chat/completions" else settings.RELAY_MAX_BODY_BYTES
        body, headers["Content-Type"] = chunked(limit + 2**20), "application/json"
    else:
        field = "file" if "documents" in path else "image"
        body = multipart(field, settings.RELAY_MAX_UPLOAD_BYTES + 2**20)
        headers["Content-Type"] = "multipart/form-data; boundary=relay"
    with caplog.at_level("WARNING"), httpx.Client(base_url=asgi_server.url, timeout=60) as client:
        response = client.post(path, content=body, headers=headers)
    assert response.status_code == 413, (response.status_code, response.text[:300])
    error = response.json()["error"]
    assert error["code"] == "payload_too_large" and isinstance(error["message"], str), error
    errors = [f"{r.name}: {r.getMessage()[:200]}" for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]
    assert not errors, errors


@pytest.mark.django_db(transaction=True)
def test_a_chunked_body_within_the_limit_is_read_whole(asgi_server, users):
    # DRF read the body by its Content-Length, so a chunked one looked empty (400 "field required").
    import httpx

    key = create_api_key(users["admin"], "chunked").secret
    body = json.dumps({"scope": "organization", "period": "monthly", "limit_usd": "10.00"}).encode()
    with httpx.Client(base_url=asgi_server.url, timeout=60) as client:
        response = client.post("/api/v1/costs/budget", content=iter([body[:20], body[20:]]),
                               headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    assert response.status_code == 201, response.text[:300]
    assert response.json()["limit_usd"] == "10"


# --- (d) money ---------------------------------------------------------------------------------

# Each is a JSON literal for a money field. Python's Decimal reads any script's digits ("٥" is 5);
# Relay's amounts are whole nano-dollars, as its ledger counts them.
BAD_AMOUNTS = ['"٥"', '"５"', '"١٠.٠٠"', '"1٠"', '"1e-10"', '1e-10', '"0.0000000001"', '"0.0000000015"',
               '"10.0000000005"', '"NaN"', '"Infinity"', '"-Infinity"', 'NaN', 'Infinity', '"-1"', '-0.5',
               '"1e30"', '1e400', '"' + "9" * 60 + '"', '"1_000"']
GOOD_AMOUNTS = [('"10.00"', "10"), ("10.5", "10.5"), ('"0.000000001"', "0.000000001"), ('"1.500000000000"', "1.5"),
                ('"1e2"', "100")]


def budget_body(amount: str) -> str:
    return '{"scope": "organization", "period": "monthly", "hard": true, "limit_usd": ' + amount + "}"


@pytest.mark.django_db
@pytest.mark.parametrize("amount", BAD_AMOUNTS)
def test_bad_money_in_a_budget_is_a_400_and_stores_nothing(caller, amount):
    # Control: billing.money.parse_amount, the one money rule (BudgetInputSerializer.validate_limit_usd).
    from billing.models import Budget

    refused(post_raw(caller, "costs-budget", budget_body(amount)), False, 400)
    assert not Budget.objects.exists()


@pytest.mark.django_db
@pytest.mark.parametrize("amount, stored", GOOD_AMOUNTS)
def test_good_money_in_a_budget_still_works(caller, amount, stored):
    from decimal import Decimal

    from billing.models import Budget

    response = post_raw(caller, "costs-budget", budget_body(amount))
    assert response.status_code == 201, response.content[:300]
    assert Budget.objects.get().limit_usd == Decimal(stored)


@pytest.fixture
def superuser_client(client, db):
    from accounts.models import User

    client.force_login(User.objects.create_superuser("root", "root@example.com", "correct horse battery staple"))
    return client


def price_form(value: str) -> dict:
    return {"model": "new-model", "input_per_1k": value, "output_per_1k": "0.002",
            "effective_from_0": "2026-01-01", "effective_from_1": "00:00:00"}


@pytest.mark.parametrize("value", ["٥", "５", "0.0000000001", "1e-10", "NaN", "-1", "0.0000000015"])
def test_bad_money_in_the_price_admin_is_a_form_error(superuser_client, value):
    # Control: the admin's money form field parses with billing.money.parse_amount.
    from billing.models import ModelPrice

    response = superuser_client.post(reverse("admin:billing_modelprice_add"), price_form(value))
    assert response.status_code == 200 and response.context["adminform"].form.errors, response.status_code
    assert "input_per_1k" in response.context["adminform"].form.errors
    assert not ModelPrice.objects.filter(model="new-model").exists()


def test_a_good_price_in_the_admin_still_works(superuser_client):
    from decimal import Decimal

    from billing.models import ModelPrice

    response = superuser_client.post(reverse("admin:billing_modelprice_add"), price_form("0.005"))
    assert response.status_code == 302, response.context["adminform"].form.errors if response.context else response
    assert ModelPrice.objects.get(model="new-model").input_per_1k == Decimal("0.005")


@pytest.mark.parametrize("value, ok", [("٥", False), ("0.0000000001", False), ("10.00", True)])
def test_money_in_the_budget_admin(superuser_client, org, value, ok):
    from decimal import Decimal

    from billing.models import Budget

    response = superuser_client.post(reverse("admin:billing_budget_add"), {
        "organization": org.pk, "scope": "organization", "period": "monthly", "limit_usd": value, "hard": "on",
        "alert_thresholds": "[]"})
    if ok:
        assert response.status_code == 302, response.context["adminform"].form.errors
        assert Budget.objects.get().limit_usd == Decimal(value)
    else:
        assert response.status_code == 200 and "limit_usd" in response.context["adminform"].form.errors
        assert not Budget.objects.exists()


# --- (e) charsets that are not text, bulk JSON structure, code too deep to read -----------------

@pytest.mark.django_db
@pytest.mark.parametrize("charset", ["hex", "base64", "zlib", "rot13"])
@pytest.mark.parametrize("name", ["query", "apikey-list"])  # an async view and a DRF one
def test_a_charset_that_is_not_a_text_encoding_is_a_400(caller, name, charset):
    # Control: relay.api.parsers._utf8 refuses codecs that are not text encodings (they decode
    # bytes to bytes, and bytes.decode raises LookupError for them: a 500).
    response = caller.generic("POST", reverse(name), json.dumps(VALID[name]),
                              content_type=f"application/json; charset={charset}")
    assert_envelope(response, 400, "malformed_request")


def empty_objects_body(size: int) -> bytes:
    """A valid chat completion whose `stop` holds `size` bytes of empty objects: little on the
    wire, about 25 bytes of memory per byte once decoded."""
    head = json.dumps({"model": "relay-math", "messages": [{"role": "user", "content": "1+1"}]})[:-1].encode()
    count = size // 3
    return head + b', "stop": [' + b"{}," * (count - 1) + b"{}]}"


@pytest.mark.django_db
def test_bulk_structure_in_an_upload_sized_body_is_refused_before_it_is_decoded(caller):
    # Control: relay.api.parsers.BoundedJSONParser holds what is not a data URL's base64 to the
    # JSON limit before json.loads (9 MB of "{}," decoded is about 250 MB).
    import time
    import tracemalloc

    body = empty_objects_body(9 * 1024 * 1024)
    tracemalloc.start()
    started = time.monotonic()
    try:
        response = post_raw(caller, "openai-chat-completions", body)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    refused(response, True, 413, "payload_too_large")
    assert peak < 80 * 1024 * 1024, f"{peak / 2**20:.0f} MB traced while refusing a 9 MB body"
    assert time.monotonic() - started < 10


@pytest.mark.django_db
@pytest.mark.parametrize("name, openai", JSON_ENDPOINTS)
def test_json_with_more_containers_than_the_ceiling_is_a_400(caller, name, openai):
    # Control: relay.api.parsers.MAX_JSON_CONTAINERS, checked before json.loads on every transport.
    from relay.api.parsers import MAX_JSON_CONTAINERS

    extra = EXTRA_FIELD.get(name, "extra")
    body = json.dumps(VALID[name])[:-1] + f', "{extra}": [' + "[]," * MAX_JSON_CONTAINERS + "[]]}"
    error = refused(post_raw(caller, name, body), openai, 400, "malformed_request")
    assert f"{MAX_JSON_CONTAINERS:,}" in error["message"], error


def test_brackets_inside_strings_are_not_containers():
    from relay.api.parsers import MAX_JSON_CONTAINERS, parse_json

    text = '{[\\"' * MAX_JSON_CONTAINERS
    assert parse_json(json.dumps({"code": text, "list": [[]] * 10})) == {"code": text, "list": [[]] * 10}


@pytest.mark.django_db
@pytest.mark.parametrize("query", ["1+" * 15_999 + "1", "-" * 20_000 + "1", "(" * 5_000 + "1" + ")" * 5_000])
def test_code_too_deep_for_pythons_parser_is_not_a_500(caller, query):
    # Control: agents.kinds.code.extract_code treats RecursionError/MemoryError from ast.parse as
    # "not a program" (it runs in heavy.admit_run, before the runner's own error handling).
    response = caller.post(reverse("query"), {"query": query, "agent_type": "code"}, format="json")
    assert response.status_code < 500, (response.status_code, response.content[:300])
    if response.status_code != 200:
        assert_envelope(response, response.status_code)
