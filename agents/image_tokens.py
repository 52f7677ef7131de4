"""The prompt tokens of an image part, as OpenAI's vision models count them.

A flat count per image let a client reserve (and, where the upstream reports no usage, pay) 85
tokens for a picture the upstream bills at up to 1,445: a hard budget then held only because
Relay's record stopped at the reservation, and the rest went unbilled. So an image is counted
from its size: `detail: "low"` is 85 tokens; otherwise ("high", or "auto", which may be high) the
image is fitted within 2048 x 2048, then its shorter side to at most 768, and each 512-pixel
tile costs 170 more. Only the header is read for the size (Pillow does not decode pixels to
open an image); what cannot be read counts as a low-detail image, and is refused as a 400
before any run by agents.api.openai_images.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import threading
from collections import OrderedDict

BASE_TOKENS = 85
TILE_TOKENS = 170
_FIT, _SHORT_SIDE, _TILE = 2048, 768, 512
_REMEMBERED = 256

# A conversation sends its images again each turn, and a run counts its prompt once per round:
# the size of an image (keyed by its URL's length and hash, not the URL, which may be megabytes)
# is read once per process.
_sizes: OrderedDict[tuple[int, int], tuple[int, int] | None] = OrderedDict()
_lock = threading.Lock()


def tokens_for_size(width: int, height: int, detail: str = "auto") -> int:
    if detail == "low" or width <= 0 or height <= 0:
        return BASE_TOKENS
    scale = min(1.0, _FIT / max(width, height))
    width, height = width * scale, height * scale
    scale = min(1.0, _SHORT_SIDE / min(width, height))
    width, height = width * scale, height * scale
    return BASE_TOKENS + TILE_TOKENS * math.ceil(width / _TILE) * math.ceil(height / _TILE)


def count(part: dict) -> int:
    """Tokens of an OpenAI image content part (`image_url` with a data URL)."""
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, dict) else image
    detail = str(image.get("detail") or "auto") if isinstance(image, dict) else "auto"
    if detail == "low" or not isinstance(url, str):
        return BASE_TOKENS
    size = _size(url)
    return tokens_for_size(*size, detail) if size else BASE_TOKENS


def _size(url: str) -> tuple[int, int] | None:
    key = (len(url), hash(url))
    with _lock:
        if key in _sizes:
            _sizes.move_to_end(key)
            return _sizes[key]
    size = _read_size(url)
    with _lock:
        _sizes[key] = size
        while len(_sizes) > _REMEMBERED:
            _sizes.popitem(last=False)
    return size


def _read_size(url: str) -> tuple[int, int] | None:
    from PIL import Image, UnidentifiedImageError

    head, _, payload = url.partition(",")
    if not head.lower().startswith("data:") or not head.lower().endswith(";base64"):
        return None
    try:
        with Image.open(io.BytesIO(base64.b64decode(payload, validate=True))) as image:
            return image.size
    except (binascii.Error, ValueError, OSError, UnidentifiedImageError, Image.DecompressionBombError):
        return None
