"""JSON from clients, parsed one way everywhere.

`parse_json` is the only parser of client JSON: the async views (`read_json`), DRF
(`BoundedJSONParser`, the DEFAULT_PARSER_CLASSES entry) and the WebSocket consumer's frames all
go through it, so a body refused on one transport is refused on every other.
"""

import json

from django.conf import settings
from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser

from relay.api.errors import PayloadTooLarge

# Deeper JSON is refused before anything walks it: Python's decoder, DRF's fields, json.dumps and
# the tokenizer all recurse, and 10,000 levels ended in RecursionError (a 500). No request Relay
# takes needs more than a few levels; tool schemas of the OpenAI API a dozen at most.
MAX_JSON_DEPTH = 64
_TOO_DEEP = f"JSON nested deeper than {MAX_JSON_DEPTH} levels is not accepted."


class JSONRejected(ValueError):
    """JSON that decodes but that Relay refuses (too deep, NaN/Infinity)."""


def _refuse_constant(name: str):
    raise JSONRejected(f"{name} is not valid JSON.")


def parse_json(raw: bytes | str, *, encoding: str = "utf-8"):
    """The decoded value, or a ValueError naming the problem (never RecursionError).

    Refuses what the JSON standard does: NaN and Infinity; and what Relay does: nesting past
    MAX_JSON_DEPTH levels (the top-level object or array is level 1).
    """
    if isinstance(raw, bytes | bytearray):
        try:
            raw = raw.decode(encoding)
        except LookupError:
            raise JSONRejected(f"Unknown charset {encoding[:40]!r}.") from None
    # Fewer brackets than the limit cannot nest past it: almost every body skips the walk.
    deep = raw.count("[") + raw.count("{") > MAX_JSON_DEPTH
    try:
        value = json.loads(raw, parse_constant=_refuse_constant)
    except RecursionError:
        raise JSONRejected(_TOO_DEEP) from None
    if deep and _nests_past_limit(value):
        raise JSONRejected(_TOO_DEEP)
    return value


def _nests_past_limit(value) -> bool:
    stack = [(value, 1)] if isinstance(value, dict | list) else []
    while stack:  # iterative: the walk itself must not recurse
        item, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            return True
        children = item.values() if isinstance(item, dict) else item
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def parse_json_body(body: bytes, encoding: str | None = None):
    """parse_json for an HTTP body: 400 `malformed_request` (ParseError) instead of ValueError."""
    try:
        return parse_json(body, encoding=encoding or settings.DEFAULT_CHARSET)
    except ValueError as error:
        raise ParseError(f"JSON parse error - {error}") from None


class BoundedJSONParser(JSONParser):
    """DRF's JSON parser with Relay's rules: RELAY_MAX_BODY_BYTES and parse_json.

    DRF's own parser reads the stream without limit; Content-Length can be absent (chunked).
    """

    def parse(self, stream, media_type=None, parser_context=None):
        limit = settings.RELAY_MAX_BODY_BYTES
        body = stream.read(limit + 1) if stream is not None else b""
        if len(body) > limit:
            raise PayloadTooLarge(f"The request body is larger than {limit} bytes.")
        return parse_json_body(body, (parser_context or {}).get("encoding"))
