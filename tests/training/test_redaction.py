"""Personal data and secrets are redacted before anything is written, and counted per kind."""

from collections import Counter

import pytest

from tests.training.conftest import build, conversation, dataset, lines_of, turn
from training.redaction import KINDS, luhn_ok, redact

FOUND = [
    ("email", "write to jane.doe+news@example.co.uk today"),
    ("email", "write to jürgen.müller@beispiel.de today"),  # a local part beyond ASCII
    ("email", "write to _ops@example.com today"),
    ("email", "write to anna@bücher.example today"),
    ("phone", "call +44 20 7946 0958 tomorrow"),
    ("phone", "call +1 (555) 123-4567 tomorrow"),
    ("phone", "call +33612345678 tomorrow"),
    ("phone", "call (555) 123-4567 tomorrow"),
    ("phone", "call 555-123-4567 tomorrow"),
    ("phone", "call 020 7946 0958 tomorrow"),
    ("phone", "call 0612345678 tomorrow"),
    ("phone", "call 07911 123456 tomorrow"),  # a UK mobile, national format
    ("card", "card 4111 1111 1111 1111 please"),
    ("card", "card 4242-4242-4242-4242 please"),
    ("card", "card 378282246310005 please"),  # 15 digits (Amex)
    ("ipv4", "host 192.168.1.10 is up"),
    ("ipv6", "host 2001:db8::1 is up"),
    ("ipv6", "host fe80::1%eth0 is up"),
    ("ipv6", "host ::ffff:10.0.0.1 is up"),
    ("relay_key", "key rk_AbCdEfGh12345678_secretpart here"),
    ("openai_key", "key sk-proj-abcdefghijklmnopqrstuvwx here"),
    ("anthropic_key", "key sk-ant-api03-abcdefghijklmnop here"),
    ("aws_key", "key AKIAIOSFODNN7EXAMPLE here"),
    ("github_token", "token ghp_abcdefghijklmnopqrstuvwxyz0123456789 here"),
    ("slack_token", "token xoxb-1234567890-abcdefghij here"),
]
KEPT = [
    "a non-Luhn card-length number 1234 5678 9012 3456 stays",
    "so does 1234567890123456 written together",
    "a 6-digit code 123456 stays",
    "short 123-456 stays",
    "dates 2026-12-02 and 02/12/2026 stay",
    "version 1.2.3 and pi 3.14159265 stay",
    "a time 12:30:45 and C++ std::vector stay",
    "an order number 1234567 stays",
    "not an address 999.1.1.1",
    "a 25-digit run 1234567890123456789012345 stays",
    "sk-short and rk_ are words",
]


@pytest.mark.parametrize(("kind", "text"), FOUND)
def test_each_kind_is_redacted_and_counted(kind, text):
    counts = Counter()
    redacted = redact(text, counts)
    assert f"[REDACTED_{kind.upper()}]" in redacted, redacted
    assert counts == Counter({kind: 1}), (text, counts)
    assert redacted.split()[0] == text.split()[0] and redacted.split()[-1] == text.split()[-1]


@pytest.mark.parametrize("text", KEPT)
def test_look_alikes_stay(text):
    counts = Counter()
    assert redact(text, counts) == text
    assert not counts


def test_luhn():
    assert luhn_ok("4111111111111111") and luhn_ok("378282246310005")
    assert not luhn_ok("1234567890123456")


@pytest.mark.django_db
def test_a_build_writes_no_finding_and_records_the_counts(users, consent):
    conv = conversation(users["user"])
    text = " and ".join(sample for _, sample in FOUND)
    tool = [{"call_id": "call_1", "name": "search", "input": {"q": "mail bob@example.com"},
             "output": "found at 10.0.0.7", "ok": True}]
    turn(conv, "My email is jane.doe+news@example.co.uk. " + text, "Noted: 4111 1111 1111 1111", tool_calls=tool)
    version = build(dataset(users["admin"].organization))
    written = version_path(version).read_text(encoding="utf-8")
    for secret in ("jane.doe", "4111 1111", "bob@example.com", "10.0.0.7", "AKIAIOSFODNN7EXAMPLE", "ghp_", "xoxb-",
                   "sk-ant-", "sk-proj", "rk_AbCd", "7946 0958", "2001:db8"):
        assert secret not in written, secret
    assert set(version.redactions) == set(KINDS)
    expected = Counter(kind for kind, _ in FOUND)
    expected["email"] += 2  # the question's own and the tool input's
    expected["card"] += 1  # the answer's
    expected["ipv4"] += 1  # the tool output's
    assert version.redactions == {kind: expected[kind] for kind in KINDS}
    assert lines_of(version)[0]["messages"][-1]["content"] == "Noted: [REDACTED_CARD]"


def version_path(version):
    from training import storage

    return storage.path(version.file_name)
