"""The hash chain: canonical form of an event, its hash, and the walk that verifies it.

hash = SHA-256(prev_hash + canonical JSON), where the canonical JSON has sorted keys, no
whitespace, times in ISO-8601 UTC with microseconds, decimals as strings. Values are
normalised *before* they are stored (see `normalise`) so that what the database hands back
reads the same canonical bytes years later, on another driver or database.

Each event carries the version of the format it was hashed in and verifies under that version
forever: 1 is the original format; 2 (every new event) also hashes the version itself, so a
later format can never be read back as an earlier one. The `actor`/`organization` pointers are
not hashed (they go NULL when the row they point to is deleted); verification checks that each
is NULL or equal to its hashed reference instead.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import json
import math
import uuid
from dataclasses import dataclass
from decimal import Decimal

from django.conf import settings
from django.utils.crypto import constant_time_compare, salted_hmac

GENESIS = "0" * 64
FORMAT_VERSION = 2  # what new events are hashed in
FORMAT_VERSIONS = (1, 2)
POINTERS = ("organization", "actor")  # <name>_id must be NULL or equal to the hashed <name>_ref
_CHECKPOINT_SALT = "relay.audit.checkpoint"


def iso(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def normalise_ip(value: str | None) -> str | None:
    """One spelling per address: IPv4-mapped IPv6 becomes IPv4, zone ids are dropped."""
    if not value:
        return None
    try:
        address = ipaddress.ip_address(str(value).split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return str(address)


def clean_text(value, limit: int | None) -> str:
    # PostgreSQL text and jsonb refuse NUL; replacing it keeps a hostile string recordable.
    return str(value or "").replace("\x00", "\ufffd")[:limit]


TEXT_LIMIT, KEY_LIMIT = 10_000, 200  # what one metadata string and one key keep when recorded


def normalise(value, text_limit: int | None = TEXT_LIMIT, key_limit: int | None = KEY_LIMIT):
    """JSON-safe metadata that survives a database round trip unchanged (jsonb reorders keys,
    reformats numbers and drops nothing else). Limits None: cut nothing (hashing what is stored)."""
    if isinstance(value, dict):
        return {clean_text(k, key_limit): normalise(v, text_limit, key_limit) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [normalise(v, text_limit, key_limit) for v in value]
    if isinstance(value, set | frozenset):
        return sorted((normalise(v, text_limit, key_limit) for v in value), key=repr)
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return int(value) if value.is_integer() else value
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, dt.datetime):
        return iso(value) if value.tzinfo else value.isoformat()
    if isinstance(value, dt.date | dt.time | uuid.UUID):
        return value.isoformat() if hasattr(value, "isoformat") else str(value)
    return clean_text(value, text_limit)


# json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False), without building
# an encoder per call (every append and every verified event hashes).
_canonical_json = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode


class UnknownFormat(ValueError):
    pass


def canonical(event) -> bytes:
    version = getattr(event, "version", 1)  # plain objects without one are in the original format
    if version not in FORMAT_VERSIONS:
        raise UnknownFormat(f"unknown hash format version {version!r}")
    data = {
        "sequence": event.sequence,
        "time": iso(event.time),
        "actor_id": event.actor_ref,
        "actor_name": event.actor_name,
        "api_key_prefix": event.api_key_prefix,
        "organization_id": event.organization_ref,
        "action": event.action,
        "resource": event.resource,
        "status": event.status,
        "ip": normalise_ip(event.ip),
        "user_agent": event.user_agent,
        "request_id": event.request_id,
        # Normalised again: the database may give back 1.0 as 1, which must hash the same. Nothing
        # is cut: a string lengthened in the database past the limits must change the hash.
        "metadata": normalise(event.metadata, None, None),
    }
    if version >= 2:
        data["version"] = version
    return _canonical_json(data).encode()


def compute_hash(prev_hash: str, event) -> str:
    return hashlib.sha256(prev_hash.encode() + canonical(event)).hexdigest()


# --- Checkpoints ----------------------------------------------------------------------------

# Both kinds are signed with the same key; their messages cannot be mistaken for each other (a
# prune checkpoint's starts with a digit), so one kind cannot be passed off as the other.

def checkpoint_message(last_sequence: int, last_hash: str, count: int, before: dt.datetime, created: dt.datetime) -> str:
    """What a prune checkpoint signs."""
    return f"{last_sequence}:{last_hash}:{count}:{iso(before)}:{iso(created)}"


def head_message(sequence: int, hash_: str, created: dt.datetime, previous_signature: str = "") -> str:
    """What a checkpoint of the chain head signs: with the signature of the one before it, if any
    (audit.head_checkpoints; checkpoints from before the link sign the first form)."""
    message = f"head:{sequence}:{hash_}:{iso(created)}"
    return f"{message}:after:{previous_signature}" if previous_signature else message


def sign(message: str, secret: str | None = None) -> str:
    return salted_hmac(_CHECKPOINT_SALT, message, secret=secret, algorithm="sha256").hexdigest()


def signature_valid(checkpoint) -> bool:
    """`checkpoint` is either kind (it knows its `signed_message()`); SECRET_KEY_FALLBACKS count too."""
    message = checkpoint.signed_message()
    secrets = [settings.SECRET_KEY, *getattr(settings, "SECRET_KEY_FALLBACKS", [])]
    return any(constant_time_compare(sign(message, secret), checkpoint.signature) for secret in secrets)


# --- Verification ---------------------------------------------------------------------------

@dataclass
class Verdict:
    ok: bool
    verified: int
    message: str
    sequence: int | None = None  # the first event found wrong
    head_sequence: int = 0
    head_hash: str = GENESIS


def verify(events, *, start_sequence: int = 1, start_hash: str = GENESIS, checkpoints=()) -> Verdict:
    """Walk `events` (ascending sequence, streamed) from a known start; stop at the first break.

    A changed event no longer matches its own hash (altered); a row whose hash is right but
    whose prev_hash does not link to its predecessor was put there (inserted); a sequence that
    skips numbers lost events (missing); a repeated sequence was inserted; a pointer that is
    neither NULL nor its hashed reference was moved; an event at the sequence of one of
    `checkpoints` (signed heads, (sequence, hash) in ascending sequence, streamed) with another
    hash was rewritten, with everything after it, or replaced.
    """
    expected, prev_hash, count = start_sequence, start_hash, 0
    marks = _Marks(checkpoints)
    if (problem := marks.passing(start_sequence - 1, start_hash)) is not None:
        return Verdict(False, 0, f"The start of the chain (#{start_sequence - 1}, where pruning cut it) {problem}",
                       start_sequence - 1)
    for event in events:
        if event.sequence < expected:
            return Verdict(False, count, f"Event #{event.sequence} (id {event.pk}) is inserted: sequence "
                           f"#{event.sequence} appears twice or out of order.", event.sequence, expected - 1, prev_hash)
        if event.sequence > expected:
            gap = f"#{expected}" if event.sequence == expected + 1 else f"#{expected}..#{event.sequence - 1}"
            return Verdict(False, count, f"Event {gap} is missing: the chain jumps from #{expected - 1} to "
                           f"#{event.sequence} (deleted?).", expected, expected - 1, prev_hash)
        problem = (_content_problem(event) or _link_problem(event, prev_hash) or _moved_pointer(event)
                   or marks.passing(event.sequence, event.hash))
        if problem is not None:
            return Verdict(False, count, f"Event #{event.sequence} (id {event.pk}) {problem}", event.sequence,
                           expected - 1, prev_hash)
        prev_hash, expected, count = event.hash, expected + 1, count + 1
    return Verdict(True, count, f"{count} events verified; head #{expected - 1} {prev_hash}.", None,
                   expected - 1, prev_hash)


def _content_problem(event) -> str | None:
    try:
        intact = compute_hash(event.prev_hash, event) == event.hash
    except UnknownFormat as unknown:
        return f"was altered: {unknown}."
    return None if intact else "was altered: its content no longer matches its hash."


def _link_problem(event, prev_hash: str) -> str | None:
    if event.prev_hash == prev_hash:
        return None
    before = event.sequence - 1
    return f"is inserted or its predecessor #{before} was rewritten: its prev_hash does not link to #{before}."


class _Marks:
    """The signed heads along the walk: each must have the hash of the event at its sequence."""

    def __init__(self, checkpoints):
        self._marks = iter(checkpoints)
        self._next = next(self._marks, None)

    def passing(self, sequence: int, hash_: str) -> str | None:
        while self._next is not None and self._next[0] <= sequence:
            mark, self._next = self._next, next(self._marks, None)
            if mark[0] == sequence and mark[1] != hash_:
                return (f"does not match the signed checkpoint of the head at #{mark[0]} (hash {mark[1]}): the "
                        "chain was rewritten up to here, or events were deleted and new ones appended in their "
                        "place.")
        return None


def _moved_pointer(event) -> str | None:
    """A pointer that is neither NULL nor its hashed reference: the event was moved by hand."""
    for name in POINTERS:
        pointer, recorded = getattr(event, f"{name}_id", None), getattr(event, f"{name}_ref", None)
        if pointer is not None and pointer != recorded:
            return (f"was moved: its {name} pointer is {pointer}, but {name} {recorded} was recorded "
                    "(and hashed).")
    return None
