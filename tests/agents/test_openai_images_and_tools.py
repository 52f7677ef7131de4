"""/v1/chat/completions: images as data URLs reach the vision agent; client tools on relay-<agent> are refused.

Controls: agents.api.openai_images (data URLs, no remote fetch, the upload's image checks),
agents.api.openai_api (_attachment, _bounded_body, _refuse_client_tools), the upload-sized body
limit of api_endpoint(upload_sized=True) read by RequestSizeLimitMiddleware, the ASGI handler and
BoundedJSONParser.
"""

import base64
import io
import os

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse
from PIL import Image

from tests.agents.test_vision import png_claiming_size
from tests.conftest import assert_envelope

CHAT = "/v1/chat/completions"


def png(colour="red", size=(64, 48)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "PNG")
    return buffer.getvalue()


def noise_png(side: int) -> bytes:
    """A PNG that does not compress: about 3 × side² bytes."""
    buffer = io.BytesIO()
    Image.frombytes("RGB", (side, side), os.urandom(3 * side * side)).save(buffer, "PNG")
    return buffer.getvalue()


def data_url(data: bytes, media_type="image/png") -> str:
    return f"data:{media_type};base64,{base64.b64encode(data).decode()}"


def image_message(url: str, text: str | None = "What colour is it?") -> list[dict]:
    parts = [{"type": "text", "text": text}] if text is not None else []
    return [{"role": "user", "content": [*parts, {"type": "image_url", "image_url": {"url": url}}]}]


def openai_error(response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, (response.status_code, response.content[:400])
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    if code is not None:
        assert error["code"] == code, error
    return error


# --- the openai SDK, over real sockets --------------------------------------------------------

@pytest.mark.django_db(transaction=True)
def test_openai_sdk_sends_an_image_to_relay_vision(asgi_server, user_key):
    import openai

    client = openai.OpenAI(base_url=f"{asgi_server.url}/v1", api_key=user_key, max_retries=0)
    whole = client.chat.completions.create(model="relay-vision", messages=image_message(data_url(png("red"))))
    answer = whole.choices[0].message.content
    assert "64 × 48" in answer and "red" in answer and whole.usage.total_tokens > 0, answer
    chunks = list(client.chat.completions.create(
        model="relay-vision", messages=image_message(data_url(png("blue")), text=None), stream=True))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "blue" in streamed and "PNG" in streamed, streamed


@pytest.mark.django_db(transaction=True)
def test_an_image_larger_than_the_json_limit_reaches_the_vision_agent(asgi_server, user_key, settings):
    import openai

    image = noise_png(1000)
    body_size = len(data_url(image))
    assert settings.RELAY_MAX_BODY_BYTES < body_size < settings.RELAY_MAX_UPLOAD_BYTES
    client = openai.OpenAI(base_url=f"{asgi_server.url}/v1", api_key=user_key, max_retries=0, timeout=60)
    whole = client.chat.completions.create(model="relay-vision", messages=image_message(data_url(image)))
    assert "1000 × 1000" in whole.choices[0].message.content


@pytest.mark.django_db(transaction=True)
def test_openai_sdk_gets_a_400_for_client_tools_on_relay_agents(asgi_server, user_key):
    import openai

    client = openai.OpenAI(base_url=f"{asgi_server.url}/v1", api_key=user_key, max_retries=0)
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="relay-math", messages=[{"role": "user", "content": "2+2"}],
                                       tools=tools, tool_choice="auto")
    error = refused.value.body
    assert error["code"] == "unsupported_parameter" and error["param"] in ("tools", "tool_choice"), error
    assert "tools" in error["message"] and "tool_choice" in error["message"], error


@pytest.mark.django_db(transaction=True)
def test_plain_models_still_pass_client_tools_to_the_upstream(asgi_server, user_key, fake_upstream, upstream_model):
    import openai

    fake_upstream.configure(tool_calls=[{"name": "lookup", "arguments": {"city": "Oslo"}}])
    tools = [{"type": "function", "function": {"name": "lookup", "description": "Weather in a city.",
                                               "parameters": {"type": "object",
                                                              "properties": {"city": {"type": "string"}}}}}]
    client = openai.OpenAI(base_url=f"{asgi_server.url}/v1", api_key=user_key, max_retries=0)
    whole = client.chat.completions.create(model=upstream_model, tools=tools,
                                           messages=[{"role": "user", "content": "Weather in Oslo?"}])
    assert fake_upstream.requests[-1].body["tools"] == tools
    choice = whole.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.tool_calls[0].function.name == "lookup"


# An upstream is handed every image part as it came: each is checked as the agent's image is.
UPSTREAM_REFUSALS = [
    ("http://10.0.0.5/internal.png", 400, "does not fetch"),  # the upstream would fetch it from where it sits
    ("data:image/png,not-base64-encoded", 400, "base64 data URL"),
    ("data:image/png;base64,@@@not base64@@@", 400, "not valid base64"),
    (data_url(b"x" * 3000), 400, "image"),  # text posing as an image: past the JSON limit, 85 tokens
    (data_url(png_claiming_size(20_000, 20_000)), 413, "20000 × 20000"),
]


@pytest.mark.django_db(transaction=True)
def test_upstream_models_get_only_checked_images(asgi_server, user_key, fake_upstream, upstream_model):
    import openai

    client = openai.OpenAI(base_url=f"{asgi_server.url}/v1", api_key=user_key, max_retries=0)
    for url, status, says in UPSTREAM_REFUSALS:
        # An earlier image is checked too: each one reaches the upstream, not only the latest.
        messages = [*image_message(url), {"role": "assistant", "content": "ok"}, *image_message(data_url(png()))]
        with pytest.raises(openai.APIStatusError) as refused:
            client.chat.completions.create(model=upstream_model, messages=messages)
        error = refused.value.body
        assert refused.value.status_code == status and says in error["message"], (url[:40], error)
        assert error["param"] == ("messages" if status == 400 else None), (url[:40], error)  # as the agent's 413
    assert not fake_upstream.requests


@pytest.mark.django_db(transaction=True)
def test_upstream_models_still_get_data_url_images(asgi_server, user_key, fake_upstream, upstream_model):
    import openai

    client = openai.OpenAI(base_url=f"{asgi_server.url}/v1", api_key=user_key, max_retries=0)
    url = data_url(png("green"))
    whole = client.chat.completions.create(model=upstream_model, messages=image_message(url, text="colour"))
    assert whole.choices[0].message.content == "Echo: colour"
    sent = fake_upstream.requests[-1].body["messages"][-1]["content"]
    assert {"type": "image_url", "image_url": {"url": url}} in sent, sent


# --- refusals, through the test client --------------------------------------------------------

@pytest.fixture
def caller(users, client_for):
    return client_for(users["user"], via="api_key")


def chat(client, messages, model="relay-vision", **extra):
    return client.post(CHAT, {"model": model, "messages": messages, **extra}, format="json")


@pytest.mark.django_db
@pytest.mark.parametrize("url, says", [
    ("https://example.com/cat.png", "does not fetch"),
    ("http://169.254.169.254/latest/meta-data", "does not fetch"),
    ("HTTPS://EXAMPLE.COM/x.png", "does not fetch"),
    ("file:///etc/passwd", "base64 data URL"),
    ("data:image/png,not-base64-encoded", "base64 data URL"),
    ("data:image/png;base64,@@@not base64@@@", "not valid base64"),
    ("data:text/plain;base64,aGVsbG8=", "not an image"),
])
def test_remote_and_malformed_image_urls_are_400(caller, url, says):
    error = openai_error(chat(caller, image_message(url)), 400, "invalid")
    assert error["param"] == "messages" and says in error["message"], error


@pytest.mark.django_db
def test_an_image_url_part_without_a_url_is_400(caller):
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"detail": "auto"}}]}]
    assert openai_error(chat(caller, messages), 400, "invalid")["param"] == "messages"


@pytest.mark.django_db
def test_non_images_get_the_same_400_as_an_upload(caller, client_for, users):
    junk = b"not an image at all"
    upload = assert_envelope(client_for(users["user"]).post(
        reverse("vision-analyze"), {"image": SimpleUploadedFile("x.png", junk, "image/png")}, format="multipart"),
        400, "invalid")
    error = openai_error(chat(caller, image_message(data_url(junk))), 400, "invalid")
    assert error["message"].removeprefix("Invalid input. messages: ") == upload["message"].removeprefix(
        "Invalid input. image: "), (error, upload)


@pytest.mark.django_db
def test_images_over_the_pixel_ceiling_get_the_same_413_as_an_upload(caller):
    error = openai_error(chat(caller, image_message(data_url(png_claiming_size(20_000, 20_000)))), 413,
                         "payload_too_large")
    assert "20000 × 20000" in error["message"], error


@pytest.mark.django_db
def test_agents_that_cannot_see_refuse_images(caller):
    error = openai_error(chat(caller, image_message(data_url(png())), model="relay-math"), 400, "invalid")
    assert "relay-vision" in error["message"], error


@pytest.mark.django_db
def test_only_requests_with_images_may_pass_the_json_limit(caller, settings):
    settings.RELAY_MAX_BODY_BYTES = 20_000
    settings.RELAY_MAX_UPLOAD_BYTES = 200_000
    text = [{"role": "user", "content": "x" * 30_000}]
    assert openai_error(chat(caller, text, model="relay-math"), 413, "payload_too_large")
    image = noise_png(80)  # ~19 KB of PNG, ~26 KB as base64
    response = chat(caller, image_message(data_url(image)))
    assert response.status_code == 200, response.content[:300]
    assert "80 × 80" in response.json()["choices"][0]["message"]["content"]
    # An image does not carry other bulk past the JSON limit with it (unknown fields are ignored).
    padded = chat(caller, image_message(data_url(png())), user="x" * 30_000)
    assert openai_error(padded, 413, "payload_too_large")
    too_big = image_message(data_url(noise_png(300)))  # ~270 KB: past the upload limit too
    # Refused by RequestSizeLimitMiddleware before any view (and its OpenAI error shape) runs.
    assert_envelope(chat(caller, too_big), 413, "payload_too_large")
    # The other JSON endpoints keep the JSON limit.
    assert_envelope(caller.post(reverse("query"), {"query": "1+1", "agent_type": "math", "pad": "x" * 30_000},
                                format="json"), 413, "payload_too_large")


@pytest.mark.django_db
@pytest.mark.parametrize("extra, fields", [
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]}, ["tools"]),
    ({"tool_choice": "auto"}, ["tool_choice"]),
    ({"tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "required"},
     ["tools", "tool_choice"]),
    ({"functions": [{"name": "f"}]}, ["functions"]),
])
def test_client_tools_on_relay_agents_are_400_naming_the_field(caller, extra, fields):
    response = chat(caller, [{"role": "user", "content": "integrate x^2"}], model="relay-math", **extra)
    error = openai_error(response, 400, "unsupported_parameter")
    assert error["param"] == fields[0] and error["type"] == "invalid_request_error", error
    assert all(f"{field}:" in error["message"] for field in fields), error


@pytest.mark.django_db
def test_empty_tool_fields_are_not_client_tools(caller):
    response = chat(caller, [{"role": "user", "content": "integrate x^2"}], model="relay-math", tools=[],
                    tool_choice=None)
    assert response.status_code == 200 and r"\frac{x^{3}}{3}" in response.json()["choices"][0]["message"]["content"]


def _tool(description: str) -> dict:
    return {"type": "function", "function": {"name": "lookup", "description": description,
                                             "parameters": {"type": "object"}}}


@pytest.mark.django_db
def test_client_tools_are_input_for_the_token_rate_limit(users):
    # Control: agents.tokenizer.count_tool_tokens in runner._prepare. Without it the definitions,
    # which the model reads with every round, rode along uncounted: not reserved, not rate-limited.
    from rest_framework.test import APIClient

    from accounts.actions.keys import create_api_key

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {create_api_key(users['user'], 'tools', tokens_per_minute=3000).secret}")
    messages = [{"role": "user", "content": "hi"}]
    small = client.post(CHAT, {"model": "local-mini", "max_tokens": 10, "messages": messages,
                               "tools": [_tool("Weather in a city.")]}, format="json")
    assert small.status_code == 200, small.content[:300]
    spent_small = 3000 - int(small["X-RateLimit-Remaining-Tokens"])
    refused = client.post(CHAT, {"model": "local-mini", "max_tokens": 10, "messages": messages,
                                 "tools": [_tool("word " * 4000)]}, format="json")
    openai_error(refused, 429, "rate_limited")
    assert spent_small < 100  # the small request fitted; the large one's 4,000 words of tools did not


@pytest.mark.django_db
def test_tool_definitions_are_bounded_like_the_conversation(caller):
    response = chat(caller, [{"role": "user", "content": "hi"}], model="local-mini",
                    tools=[_tool("word " * 30_000)])
    error = openai_error(response, 400)
    assert error["param"] == "tools" and "too long" in error["message"], error


# --- an upstream's answer and its failure, whole ----------------------------------------------

def test_an_upstream_failure_is_an_http_error_not_an_empty_answer(asgi_server, user_key, fake_upstream,
                                                                   upstream_model):
    import openai

    fake_upstream.configure(fail_all=True, fail_status=500)
    client = openai.OpenAI(base_url=f"{asgi_server.url}/v1", api_key=user_key, max_retries=0)
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model=upstream_model, messages=[{"role": "user", "content": "Hello?"}])
    assert info.value.status_code == 502
    assert info.value.body["code"] == "upstream_error" and info.value.body["type"] == "server_error"


def test_an_instance_with_every_upstream_connection_in_use_answers_503_with_retry_after(
        asgi_server, user_key, fake_upstream, upstream_model, monkeypatch):
    # Control: agents.providers.openai_compat waits for a connection itself (UpstreamBusy). Without
    # it aiohttp's pool wait timed out as an upstream timeout: a 504 counted against the deployment.
    import openai

    from agents.providers import catalog
    from agents.providers.openai_compat import OpenAICompatibleProvider

    busy = OpenAICompatibleProvider("primary", fake_upstream.base_url, None, max_retries=0, connect_timeout=0.2,
                                    max_connections=1)
    monkeypatch.setitem(catalog._providers, (fake_upstream.base_url, ""), busy)
    fake_upstream.configure(stall_after=1, stall=10)  # the first answer holds the one connection
    client = openai.OpenAI(base_url=f"{asgi_server.url}/v1", api_key=user_key, max_retries=0)
    holding = client.chat.completions.create(model=upstream_model, messages=[{"role": "user", "content": "Hold."}],
                                             stream=True)
    try:
        next(iter(holding))
        with pytest.raises(openai.APIStatusError) as info:
            client.chat.completions.create(model=upstream_model, messages=[{"role": "user", "content": "Hello?"}])
    finally:
        holding.close()
    assert info.value.status_code == 503 and info.value.response.headers["Retry-After"] == "1"
    assert info.value.body["code"] == "service_unavailable"


def test_an_upstream_that_ignores_stream_true_still_answers_in_full(asgi_server, user_key, fake_upstream,
                                                                     upstream_model):
    import openai

    fake_upstream.configure(ignore_stream=True)
    client = openai.OpenAI(base_url=f"{asgi_server.url}/v1", api_key=user_key, max_retries=0)
    whole = client.chat.completions.create(model=upstream_model, messages=[{"role": "user", "content": "one two"}])
    assert whole.choices[0].message.content == "Echo: one two" and whole.usage.completion_tokens > 0
    streamed = client.chat.completions.create(model=upstream_model, stream=True,
                                              messages=[{"role": "user", "content": "three four"}])
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == "Echo: three four"


@pytest.mark.parametrize("part", [
    {"type": "file", "file": {"file_id": "file-of-another-tenant"}},
    {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
    {"type": "video_url", "video_url": {"url": "http://10.0.0.5/internal.mp4"}},
    {"type": "text", "text": ["not", "a", "string"]},
])
def test_only_text_and_image_parts_pass_to_a_model(caller, part):
    # Control: agents.api.serializers.content_problem allows text, refusal and image_url parts only.
    # A file part would name a file in the upstream account Relay calls with, every tenant's.
    messages = [{"role": "user", "content": [{"type": "text", "text": "What is in it?"}, part]}]
    error = assert_envelope(chat(caller, messages, model="local-mini"), 400)
    assert error["param"] == "messages" and "content of message 0" in error["message"], error


# --- what an image costs ----------------------------------------------------------------------

@pytest.mark.django_db(transaction=True)
def test_large_images_are_reserved_as_the_upstream_bills_them(asgi_server, users, fake_upstream, upstream_model):
    # Control: agents.image_tokens, counted by the tokenizer into the reservation. With a flat 85
    # tokens an image the upstream bills at 765 passed a hard budget sized for 85 a picture, and
    # the run's record stopped at the reservation: the rest of the upstream's bill went unbilled.
    import openai

    from billing.models import UsageRecord
    from tests.billing.test_live_budgets import IN_PRICE, OUT_PRICE, key_budget, ledger_figures

    pictures = [data_url(png(colour, size=(2048, 2048))) for colour in ("red", "green", "blue", "white")]
    messages = [{"role": "user", "content": [{"type": "text", "text": "Compare them."},
                                             *({"type": "image_url", "image_url": {"url": u}} for u in pictures)]}]
    billed = 4 * 765 + 20  # what the upstream reports: 85 + 170 × 4 tiles an image, and the text
    fake_upstream.configure(prompt_tokens=billed)

    def ask(limit_nanos: int):
        secret, budget = key_budget(users["user"], limit_nanos)
        client = openai.OpenAI(base_url=f"{asgi_server.url}/v1", api_key=secret, max_retries=0, timeout=60)
        return client, budget

    sized_for_flat_images = (4 * 85 + 200) * IN_PRICE + 10 * OUT_PRICE
    client, _ = ask(sized_for_flat_images)
    with pytest.raises(openai.APIStatusError) as refused:
        client.chat.completions.create(model=upstream_model, messages=messages, max_tokens=10)
    assert refused.value.status_code == 402, refused.value.body
    assert not fake_upstream.requests  # refused before the upstream was asked

    client, budget = ask(10**9)
    answer = client.chat.completions.create(model=upstream_model, messages=messages, max_tokens=10)
    assert answer.usage.prompt_tokens == billed
    record = UsageRecord.objects.get(api_key__budgets=budget)
    assert record.input_tokens == billed
    assert ledger_figures(budget, record.created_at)[0] == billed * IN_PRICE + record.output_tokens * OUT_PRICE


@pytest.mark.django_db(transaction=True)
def test_only_what_relay_counts_reaches_the_model(asgi_server, user_key, fake_upstream, upstream_model):
    # Control: agents.api.serializers.forwarded_message. A legacy function_call, or a stray key in a
    # part or a tool call, reached the model uncounted: past the key's tokens per minute and the
    # reservation, and unbilled when the run was cut short.
    import httpx

    padding = "word " * 300
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "hi", "extra": padding}]},
        {"role": "assistant", "content": None, "function_call": {"name": "lookup", "arguments": padding},
         "tool_calls": [{"id": "c1", "type": "function", "more": padding,
                         "function": {"name": "lookup", "arguments": "{}", "hidden": padding}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "ok", "note": padding},
        {"role": "user", "content": [{"type": "refusal", "refusal": "no", "text": padding}, {"type": "text", "text": "go on"}]},
    ]
    response = httpx.post(f"{asgi_server.url}{CHAT}", json={"model": upstream_model, "messages": messages},
                          headers={"Authorization": f"Bearer {user_key}"}, timeout=60)
    assert response.status_code == 200, response.content[:300]
    assert fake_upstream.requests[-1].body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "hi"}]},
        {"role": "assistant", "content": None,
         "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "ok"},
        {"role": "user", "content": [{"type": "refusal", "refusal": "no"}, {"type": "text", "text": "go on"}]},
    ]
    assert response.json()["usage"]["prompt_tokens"] < 100  # and what it read is what was counted
