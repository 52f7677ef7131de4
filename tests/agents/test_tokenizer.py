import random
import time

import pytest

from agents.tokenizer import count_message_tokens, count_tokens, split_tokens

SAMPLES = [
    "",
    "hello world",
    "Ünïcödé, naïve café — “quotes” and 日本語のテキスト",
    "emoji 👍🏽 family 👨‍👩‍👧 flags 🇫🇷!",
    "control\x00chars\x07\x1b[31m and\r\nwindows\tlines\x0c",
    "lone surrogate \ud800 and combining e\u0301",
    "    indented code:\n\tdef f(x):\n\t\treturn x**2  # ok\n\n\n",
    "1234567890 3.14159 -42 1,000,000",
]


@pytest.mark.parametrize("text", SAMPLES)
def test_split_round_trips_exactly(text):
    pieces = split_tokens(text)
    assert "".join(pieces) == text
    assert all(pieces)  # no empty pieces
    assert len(pieces) == count_tokens(text)


def test_round_trip_on_random_unicode():
    rng = random.Random(1234)
    alphabet = [chr(c) for c in range(0, 0x3000) if not 0xD800 <= c < 0xE000] + ["👍", "\U0001F600", " ", "\n"]
    for _ in range(50):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 300)))
        assert "".join(split_tokens(text)) == text


@pytest.mark.parametrize("text,expected", [
    ("", 0),
    ("hello", 1),
    ("hello world", 2),
    ("Hello, world!", 4),
    ("I can't", 3),
])
def test_counts_of_simple_text(text, expected):
    assert count_tokens(text) == expected


def test_granularity_is_gpt_like():
    assert split_tokens("Hello, world!") == ["Hello", ",", " world", "!"]
    # Numbers go in groups of at most three digits.
    assert split_tokens("1234567") == ["123", "456", "7"]
    # Long words are cut into pieces of at most six letters (plus a leading space).
    pieces = split_tokens(" internationalization")
    assert pieces[0] == " intern" and all(len(p.strip()) <= 6 for p in pieces)
    # A run of spaces keeps its last space for the next word, as GPT tokenizers do.
    assert split_tokens("a   b") == ["a", "  ", " b"]
    # Scripts without spaces cost about one token per character.
    assert count_tokens("日本語のテキスト") == 8


def test_english_prose_is_in_the_usual_range():
    text = ("Relay puts a team's AI agents behind one budgeted, audited API. Operators set "
            "budgets per team and the platform stops runaway spending before it happens.")
    words = len(text.split())
    # GPT tokenizers spend about 1.2-1.4 tokens per English word.
    assert words <= count_tokens(text) <= words * 1.6


def test_one_megabyte_is_fast():
    text = ("The quick brown fox jumps over the lazy dog; 12345 naïve cafés 👍\n" * 16000)[:1_000_000]
    started = time.perf_counter()
    total = count_tokens(text)
    pieces = split_tokens(text)
    elapsed = time.perf_counter() - started
    # About a second at most on an idle machine; a quadratic or backtracking tokenizer would take
    # hours, so a ceiling generous enough for a loaded CI machine still tells them apart.
    assert elapsed < 20
    assert total == len(pieces) > 150_000
    assert "".join(pieces) == text


def test_message_overhead_matches_openai_accounting():
    messages = [{"role": "system", "content": "You are terse."},
                {"role": "user", "content": "hello world"}]
    content = count_tokens("You are terse.") + count_tokens("hello world")
    roles = count_tokens("system") + count_tokens("user")
    assert count_message_tokens(messages) == 2 * 4 + roles + content + 3
    assert count_message_tokens([]) == 3


def test_message_tokens_handle_names_parts_tools_and_none():
    base = count_message_tokens([{"role": "user", "content": "hi"}])
    assert count_message_tokens([{"role": "user", "content": "hi", "name": "ann"}]) == base + 1 + 1
    parts = [{"type": "text", "text": "hi"},
             {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]
    assert count_message_tokens([{"role": "user", "content": parts}]) == base + 85
    call = {"role": "assistant", "content": None,
            "tool_calls": [{"id": "c1", "type": "function",
                            "function": {"name": "math", "arguments": '{"expr": "2+2"}'}}]}
    assert count_message_tokens([call]) > count_message_tokens([{"role": "assistant", "content": None}])
    assert count_message_tokens([{"role": "tool", "tool_call_id": "c1", "content": "4"}]) > 3


def test_a_refusal_part_counts_as_its_text():
    from agents.tokenizer import count_message_tokens

    said = "I will not write that, but here is what I can do instead."
    as_part = count_message_tokens([{"role": "assistant", "content": [{"type": "refusal", "refusal": said}]}])
    assert as_part == count_message_tokens([{"role": "assistant", "content": said}])


def _png_url(width: int, height: int) -> str:
    import base64
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (width, height)).save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


@pytest.mark.parametrize("size, detail, tokens", [
    ((512, 512), "auto", 85 + 170),
    ((2048, 2048), "auto", 85 + 170 * 4),      # fitted to 768 × 768
    ((2048, 2048), "high", 85 + 170 * 4),
    ((4096, 1024), "auto", 85 + 170 * 4),      # fitted to 2048 × 512
    ((768, 2048), None, 85 + 170 * 8),         # 2 × 4 tiles
    ((2048, 2048), "low", 85),
    ((10, 10), "auto", 85 + 170),
])
def test_an_image_counts_as_openai_counts_it_from_its_size(size, detail, tokens):
    image = {"url": _png_url(*size), **({"detail": detail} if detail else {})}
    text_only = count_message_tokens([{"role": "user", "content": [{"type": "text", "text": "hi"}]}])
    with_image = count_message_tokens([{"role": "user", "content": [{"type": "text", "text": "hi"},
                                                                     {"type": "image_url", "image_url": image}]}])
    assert with_image - text_only == tokens
