"""Images in OpenAI content parts, for Relay's agents (`relay-<agent>` models).

A client sends an image as an `image_url` part whose URL is a data URL
(`data:image/png;base64,...`). Relay never fetches a remote URL (a server that fetches what
callers name can be made to reach hosts only it can reach), so http(s) URLs are refused with a
400 that says to send the bytes. The image is decoded and checked as an upload to
/api/v1/vision/analyze is (agents.api.serializers.BoundedImageField: the pixel ceiling is 413
before any pixel is decoded, what is not an image 400), in a DB thread, not on the event loop.

Upstream and local models get the image parts as they came, but only once each has passed the
same checks (`check_all`): the upstream would otherwise fetch a URL on Relay's behalf from where it
sits, and the body limit (which lets image URLs past the JSON limit) and the tokenizer (a flat count
per image) would let anything posing as an image through.
"""

from __future__ import annotations

import base64
import binascii
import json
import re

from django.conf import settings
from django.core.exceptions import ValidationError as DjangoValidationError
from django.core.files.uploadedfile import SimpleUploadedFile
from rest_framework import exceptions

from relay.api.errors import PayloadTooLarge

IMAGE_PART = "image_url"
# data:[<media type>][;param=value]*;base64,<payload>: the media type is checked by decoding.
_DATA_URL = re.compile(r"data:(?P<type>[\w.+-]+/[\w.+-]+)?(?:;[\w.+-]+=[^;,]*)*;base64,", re.IGNORECASE)
_PLACEHOLDER = "[image]"


def _invalid(message: str) -> exceptions.ValidationError:
    return exceptions.ValidationError({"messages": [message]})


def image_parts(messages: list[dict]) -> list[dict]:
    """Every image_url part of the messages, in order."""
    return [part for m in messages if isinstance(m.get("content"), list)
            for part in m["content"] if isinstance(part, dict) and part.get("type") == IMAGE_PART]


def inline_bytes(messages: list[dict]) -> int:
    """How much of the body the images' URLs take (the part allowed past the JSON limit)."""
    return sum(len(_raw_url(part)) for part in image_parts(messages))


def text_size(messages: list[dict]) -> int:
    """The messages' size in JSON with each image counted as a placeholder: the conversation
    length limit is about text; images have their own (the upload limit and the pixel ceiling)."""
    def without_images(message: dict) -> dict:
        content = message.get("content")
        if not isinstance(content, list):
            return message
        return {**message, "content": [_PLACEHOLDER if isinstance(p, dict) and p.get("type") == IMAGE_PART else p
                                       for p in content]}

    return sum(len(json.dumps(without_images(m))) for m in messages)


def _raw_url(part: dict) -> str:
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, dict) else image
    return url if isinstance(url, str) else ""


def _url_of(part: dict) -> str:
    url = _raw_url(part)
    if not url:
        raise _invalid('An image_url part needs {"url": "data:image/...;base64,..."}.')
    return url


def _payload(url: str) -> str:
    """The base64 payload of a data URL, or a 400 saying what is wrong with the URL."""
    scheme = url.split(":", 1)[0].lower() if ":" in url[:16] else ""
    if scheme in ("http", "https"):
        raise _invalid("Relay does not fetch images from URLs; send the image inline as a data URL "
                       "(data:image/png;base64,...).")
    match = _DATA_URL.match(url)
    if match is None:
        raise _invalid("An image_url must be a base64 data URL (data:image/png;base64,...).")
    media_type = (match["type"] or "").lower()
    if media_type and not media_type.startswith("image/"):
        raise _invalid(f"The data URL holds {media_type}, not an image.")
    return url[match.end():]


def _decoded(payload: str) -> bytes:
    limit = settings.RELAY_MAX_UPLOAD_BYTES
    if len(payload) // 4 * 3 > limit:  # refused before decoding, as an upload past the limit is unread
        raise PayloadTooLarge(f"The image is larger than {limit} bytes.")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise _invalid("The image's data URL is not valid base64.") from None


def _checked(data: bytes) -> bytes:
    """The bytes, if they are an image within the ceilings (the upload's field and its errors)."""
    from agents.api.serializers import BoundedImageField

    try:  # the name only satisfies the field's extension check: the content is what Pillow reads
        BoundedImageField().run_validation(SimpleUploadedFile("image.png", data))
    except exceptions.ValidationError as error:
        raise exceptions.ValidationError({"messages": error.detail}) from None
    except DjangoValidationError as error:
        raise exceptions.ValidationError({"messages": error.messages}) from None
    return data


def _payloads(messages: list[dict]) -> list[str]:
    # Every URL is looked at before any is decoded: a remote or malformed one costs no decoding.
    return [_payload(_url_of(part)) for part in image_parts(messages)]


def attachment(messages: list[dict]) -> bytes | None:
    """The image an agent gets: the latest image of the messages, checked as an upload.

    Every image part must be well-formed (a remote or malformed URL is refused wherever it is);
    only the one used is decoded, so a conversation that sends its earlier images again costs one
    decode. None when the messages carry no image.
    """
    payloads = _payloads(messages)
    if not payloads:
        return None
    return _checked(_decoded(payloads[-1]))


def check_all(messages: list[dict]) -> None:
    """Every image of the messages checked as an upload, for a model that is handed all of them.

    All are decoded, unlike `attachment`'s one: each reaches the model. Their total stays within
    the upload limit, which bounds the whole body.
    """
    for payload in _payloads(messages):
        _checked(_decoded(payload))
