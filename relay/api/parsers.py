"""JSON from clients, parsed one way everywhere.

`parse_json` is the only parser of client JSON: the async views (`read_json`), DRF
(`BoundedJSONParser`, the DEFAULT_PARSER_CLASSES entry) and the WebSocket consumer's frames all
go through it, so a body refused on one transport is refused on every other.
"""

import codecs
import json
import math
import re

from django.conf import settings
from rest_framework.exceptions import ParseError
from rest_framework.parsers import BaseParser
from rest_framework.renderers import JSONRenderer

from relay.api.errors import PayloadTooLarge

# Deeper JSON is refused: Python's decoder, DRF's fields, json.dumps and the tokenizer all
# recurse, and 10,000 levels ended in RecursionError (a 500). No request Relay takes needs more
# than a few levels; tool schemas of the OpenAI API a dozen at most.
MAX_JSON_DEPTH = 64
_TOO_DEEP = f"JSON nested deeper than {MAX_JSON_DEPTH} levels is not accepted."
# A \ud800-\udfff escape without its partner decodes to a lone surrogate, which no UTF-8 text can
# hold: PostgreSQL, the tokenizer and every JSON answer would fail on it later, as a 500.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89abcdefABCDEF]")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_SURROGATE = "JSON strings must not contain lone UTF-16 surrogates (\\ud800-\\udfff without a partner)."
# Each decoded object or array costs ~60 bytes per 2-3 bytes of body (a list of 7M `{}` is ~1 GB), so
# they are counted before json.loads. The largest real requests (long conversations, tool schemas)
# hold a few thousand.
MAX_JSON_CONTAINERS = 100_000
_TOO_MANY = f"JSON with more than {MAX_JSON_CONTAINERS:,} objects and arrays is not accepted."
# A string, or an unterminated one to the end: a pattern that cannot fail scans the body once
# (one that can would re-scan from every quote, as in '"\\"\\"\\"...').
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*(?:"|\\?\Z)', re.DOTALL)
# The base64 of a data URL (`data:image/png;base64,...`), the one bulk an upload-sized body may carry
# past the JSON limit: it decodes to a single string. `\/` is how some encoders write "/".
_BASE64_PAYLOAD = re.compile(rb";base64,([A-Za-z0-9+/=\\]+)")


class JSONRejected(ValueError):
    """JSON that decodes but that Relay refuses (too deep, NaN/Infinity, lone surrogates)."""


def _refuse_constant(name: str):
    raise JSONRejected(f"{name} is not valid JSON.")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400 would become inf: Infinity by another name
        raise JSONRejected(f"The number {text[:40]} is out of range.")
    return value


def parse_json(raw: bytes | str, *, encoding: str = "utf-8"):
    """The decoded value, or a ValueError naming the problem (never RecursionError).

    Refuses what the JSON standard does: NaN and Infinity (also 1e400, which would decode to
    inf); and what Relay does: nesting past MAX_JSON_DEPTH levels (the top-level object or array
    is level 1) and strings holding lone surrogates (a surrogate pair, as ensure_ascii encoders
    write emoji, is one character).
    """
    raw = _utf8(raw, encoding)
    if _containers(raw) > MAX_JSON_CONTAINERS:
        raise JSONRejected(_TOO_MANY)
    # Only an escape can make a surrogate: most bodies have none, and then only depth is walked.
    escaped = b"\\" in raw and _SURROGATE_ESCAPE.search(raw) is not None
    try:
        value = json.loads(raw.decode("utf-8"), parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError:
        raise JSONRejected(_TOO_DEEP) from None
    if isinstance(value, dict | list) and (problem := _refusal(value, surrogates=escaped)):
        raise JSONRejected(problem)
    if escaped and isinstance(value, str) and _LONE_SURROGATE.search(value):
        raise JSONRejected(_SURROGATE)
    return value


def _utf8(raw: bytes | str, encoding: str) -> bytes:
    """The body as UTF-8 bytes (a ValueError if it cannot be), without a byte order mark."""
    if isinstance(raw, str):  # text handed over already decoded (WebSocket frames)
        try:
            return raw.encode("utf-8")
        except UnicodeEncodeError:
            raise JSONRejected(_SURROGATE) from None
    try:
        info = codecs.lookup(encoding)
    except LookupError:
        raise JSONRejected(f"Unknown charset {encoding[:40]!r}.") from None
    # hex, base64, zlib, rot13 are codecs too, but bytes.decode refuses them with a LookupError.
    if not getattr(info, "_is_text_encoding", True):
        raise JSONRejected(f"The charset {encoding[:40]!r} is not a text encoding.")
    if info.name != "utf-8":  # strict: a body that is not in its charset is a UnicodeDecodeError
        return raw.decode(encoding).encode("utf-8")
    return raw[3:] if raw.startswith(codecs.BOM_UTF8) else bytes(raw)


def _containers(raw: bytes) -> int:
    """How many objects and arrays the body holds: brackets in its strings do not count, but they
    are only told apart when the quick count says it matters."""
    quick = raw.count(b"{") + raw.count(b"[")
    if quick <= MAX_JSON_CONTAINERS:
        return quick
    structure = _JSON_STRING.sub(b'""', raw)
    return structure.count(b"{") + structure.count(b"[")


def _bulk_outside_images(body: bytes) -> int:
    """The body's bytes that are not the base64 of a data URL."""
    return len(body) - sum(len(match.group(1)) for match in _BASE64_PAYLOAD.finditer(body))


def _refusal(value: dict | list, *, surrogates: bool) -> str | None:
    """Why the decoded value is refused (too deep; a lone surrogate, when `surrogates`), or None.

    Iterative, since the walk itself must not recurse; it visits containers only, and strings
    (keys included) only when the body had a surrogate escape.
    """
    stack = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if level > MAX_JSON_DEPTH:
            return _TOO_DEEP
        children = item.values() if isinstance(item, dict) else item
        if surrogates:
            texts = [*item, *children] if isinstance(item, dict) else children
            if any(isinstance(text, str) and _LONE_SURROGATE.search(text) for text in texts):
                return _SURROGATE
        stack.extend((child, level + 1) for child in children if isinstance(child, dict | list))
    return None


def parse_json_body(body: bytes, encoding: str | None = None):
    """parse_json for an HTTP body: 400 `malformed_request` (ParseError) instead of ValueError."""
    try:
        return parse_json(body, encoding=encoding or settings.DEFAULT_CHARSET)
    except ValueError as error:
        raise ParseError(f"JSON parse error - {error}") from None


class BoundedJSONParser(BaseParser):
    """DRF's JSON parser with Relay's rules: RELAY_MAX_BODY_BYTES (or the view's own limit, given
    as parser_context["max_body_bytes"]) and parse_json.

    DRF's own parser reads the stream without limit; Content-Length can be absent (chunked). It is
    not a JSONParser subclass, because DRF hands those `request.body`, which Django refuses past
    DATA_UPLOAD_MAX_MEMORY_SIZE whatever the view allows: this one reads the stream itself.
    """

    media_type = "application/json"
    renderer_class = JSONRenderer

    def parse(self, stream, media_type=None, parser_context=None):
        limit = (parser_context or {}).get("max_body_bytes") or settings.RELAY_MAX_BODY_BYTES
        body = stream.read(limit + 1) if stream is not None else b""
        if len(body) > limit:
            raise PayloadTooLarge(f"The request body is larger than {limit} bytes.")
        # An upload-sized body (api_endpoint(upload_sized=True)) may exceed the JSON limit only by
        # its images; refused before decoding, since 20 MB of structure decodes to gigabytes.
        json_limit = settings.RELAY_MAX_BODY_BYTES
        if len(body) > json_limit and _bulk_outside_images(body) > json_limit:
            raise PayloadTooLarge(f"The request body is larger than {json_limit} bytes; only images may make it larger.")
        return parse_json_body(body, (parser_context or {}).get("encoding"))
