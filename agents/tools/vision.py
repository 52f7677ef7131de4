"""Image analysis for the embedded engine's vision tool: format, size, colours, EXIF, OCR.

Images are untrusted uploads. The pixel count is checked from the header before any pixel is
decoded (``Image.open`` is lazy), so a small file claiming a gigapixel canvas is refused
without allocating it; OCR runs the tesseract binary in a subprocess with a timeout, so a
pathological image cannot hang or crash the server process.
"""

import contextlib
import io
import os
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass, field

from PIL import ExifTags, Image, ImageStat, UnidentifiedImageError

from agents import heavy

NOT_AN_IMAGE = "This file is not an image Relay can read (PNG, JPEG, GIF, WebP, BMP, TIFF)."
OCR_TIMEOUT_SECONDS = 15
MAX_EXIF_TAGS = 40
MAX_EXIF_VALUE = 200
# OCR on more pixels than this gets slow without reading any better.
OCR_MAX_PIXELS = 12_000_000
# Only decoders we mean to expose: Pillow would otherwise also open EPS (which runs
# Ghostscript on the upload), PSD, ICO and a dozen rarely audited formats.
# (Phones' multi-picture JPEGs open through "JPEG" and report themselves as "MPO".)
FORMATS = ("PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF")

# Coarse names so "what colour is it?" gets a word, not only a hex code.
_COLOUR_NAMES = {
    "black": (0, 0, 0), "white": (255, 255, 255), "grey": (128, 128, 128),
    "light grey": (200, 200, 200), "dark grey": (64, 64, 64), "red": (255, 0, 0),
    "dark red": (139, 0, 0), "orange": (255, 140, 0), "yellow": (255, 255, 0),
    "green": (0, 160, 0), "dark green": (0, 90, 0), "light green": (144, 238, 144),
    "cyan": (0, 255, 255), "blue": (0, 0, 255), "navy": (0, 0, 128),
    "light blue": (135, 206, 235), "purple": (128, 0, 128), "magenta": (255, 0, 255),
    "pink": (255, 182, 193), "brown": (139, 69, 19), "beige": (245, 245, 220),
}


class InvalidImage(ValueError):
    """An image Relay will not analyse; ``str(error)`` is safe to show the user."""

    status = 400


class ImageTooLarge(InvalidImage):
    """A canvas over the pixel ceiling (RELAY_MAX_IMAGE_PIXELS): 413 before any pixel is decoded."""

    status = 413


def _max_pixels() -> int:
    from django.conf import settings

    return settings.RELAY_MAX_IMAGE_PIXELS


def _too_large(width: int, height: int, max_pixels: int) -> ImageTooLarge:
    return ImageTooLarge(f"This image is too large to analyse ({width} × {height} pixels; "
                         f"the limit is {max_pixels / 1e6:g} megapixels).")


def check_dimensions(source, max_pixels: int | None = None) -> None:
    """Refuse (ImageTooLarge) an image whose header declares more pixels than the ceiling.

    ``source`` is bytes or a seekable file. Only the header is read; what is not an image Relay
    reads passes here and is refused by whoever decodes it. Decoded bytes are at most 4 per
    pixel (the widest mode kept), so this is also the ceiling on decoded bytes.
    """
    max_pixels = max_pixels or _max_pixels()
    stream = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source
    size = _declared_size(stream)
    if size is not None and size[0] * size[1] > max_pixels:
        raise _too_large(*size, max_pixels)


def _declared_size(stream) -> tuple[int, int] | None:
    """(width, height) from the header of the first allowed format that parses it, or None.

    The format plugins are called directly, not through Image.open: its own bomb check would
    refuse a huge canvas without saying how huge.
    """
    Image.init()
    position = stream.tell()
    try:
        prefix = stream.read(16)
        for name in FORMATS:
            factory, accept = Image.OPEN[name]
            if accept and not accept(prefix):
                continue
            stream.seek(position)
            try:
                with factory(stream, "") as image:
                    return image.size
            except Exception:  # noqa: S112 - not this format, or a corrupt header: try the next
                continue
        return None
    finally:
        stream.seek(position)


@dataclass
class ImageAnalysis:
    format: str
    width: int
    height: int
    mode: str
    dominant_colours: list = field(default_factory=list)  # [{"hex": "#rrggbb", "share": 0.42}]
    brightness: float = 0.0  # mean luminance, 0 = black, 1 = white
    exif: dict = field(default_factory=dict)
    ocr_text: str | None = None
    ocr_available: bool = False
    animated: bool = False
    question: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def summary_markdown(self) -> str:
        lines = []
        answer = _answer(self, self.question) if self.question else None
        if self.question:
            lines.append(f"You asked: *{_md_escape(self.question[:200])}*")
            if answer:
                lines += [answer, ""]
        animated = ", animated; first frame analysed" if self.animated else ""
        lines.append(f"**{self.format} image**, {self.width} × {self.height} px "
                     f"({self.mode}{animated}).")
        if self.dominant_colours:
            lines.append("Dominant colours: " + _colours_text(self.dominant_colours) + ".")
        lines.append(f"Brightness: {self.brightness:.0%} ({_brightness_word(self.brightness)}).")
        if self.exif:
            shown = [f"{k}: {_md_escape(v)}" for k, v in list(self.exif.items())[:8]]
            lines.append("EXIF: " + "; ".join(shown) + ".")
        if self.ocr_text:
            lines.append("Text found (OCR):\n" + _fenced(self.ocr_text[:2000]))
        elif self.ocr_available and self.ocr_text is not None:
            lines.append("No readable text found.")
        if self.question and not answer:
            lines.append("\nThat question needs a vision model; the facts above are what can be "
                         "measured from the image itself.")
        return "\n".join(lines)


def analyze_image(data: bytes, *, question: str | None = None, max_pixels: int | None = None,
                  ocr: bool = True) -> ImageAnalysis:
    """Analyse an uploaded image; raises ``InvalidImage`` for anything unreadable or too big."""
    max_pixels = max_pixels or _max_pixels()
    if not data:
        raise InvalidImage(NOT_AN_IMAGE)
    try:
        image = Image.open(io.BytesIO(data), formats=FORMATS)  # reads the header only
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow's own limit (Image.MAX_IMAGE_PIXELS) is a second line of defence.
        raise ImageTooLarge("This image is too large to analyse.") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError,
            TypeError, IndexError, KeyError) as exc:
        raise InvalidImage(NOT_AN_IMAGE) from exc
    with image:
        width, height = image.size
        if width <= 0 or height <= 0:
            raise InvalidImage(NOT_AN_IMAGE)
        if width * height > max_pixels:
            raise _too_large(width, height, max_pixels)
        result = ImageAnalysis(format=image.format or "unknown", width=width, height=height,
                               mode=image.mode, question=(question or "").strip() or None)
        # Not n_frames, which walks the whole file; is_animated only peeks at frame two,
        # and a corrupt second frame must not reject a readable first one.
        with contextlib.suppress(Exception):
            result.animated = bool(getattr(image, "is_animated", False))
        result.exif = _exif(image)  # before load(): EXIF comes from the header
        tesseract = shutil.which("tesseract")
        try:
            image.load()
            # Work on reduced copies: a full-size RGBA flattening of a 40 MP upload would
            # cost several hundred MB for no better answer.
            small = _to_rgb(_scaled(image, 256 * 256))
            # Tesseract reads best at ~30 px letter height: enlarge small images, shrink huge.
            page = None
            if ocr and tesseract:
                page = _to_rgb(_scaled(image, OCR_MAX_PIXELS, 2.0)).convert("L")
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageTooLarge("This image is too large to analyse.") from exc
        except (OSError, SyntaxError, ValueError, EOFError, TypeError, IndexError,
                KeyError, MemoryError) as exc:  # truncated or corrupt pixel data
            raise InvalidImage(NOT_AN_IMAGE) from exc
    result.dominant_colours = _dominant_colours(small)
    result.brightness = round(ImageStat.Stat(small.convert("L")).mean[0] / 255, 3)
    result.ocr_available = tesseract is not None
    if page is not None:
        result.ocr_text = _ocr(tesseract, page)
    return result


async def analyze_image_async(data: bytes, *, user, admitted: heavy.Lease | None = None, **kwargs) -> ImageAnalysis:
    """``analyze_image`` in a worker thread holding ``user``'s heavy slot (``admitted``, the run's, if unused).

    In a thread because decoding and OCR must not block the event loop; the slot is held until
    the thread ends, even when the caller is cancelled (agents.heavy.in_thread). Busy if none is free.
    """
    return await heavy.in_thread(user, analyze_image, data, admitted=admitted, **kwargs)


def _scaled(image: Image.Image, max_pixels: int, upscale: float = 1.0) -> Image.Image:
    """``image`` resized to at most ``max_pixels`` (and at most ``upscale`` times larger), in its own mode."""
    scale = min(upscale, (max_pixels / (image.width * image.height)) ** 0.5)
    if abs(scale - 1.0) < 0.01:
        return image
    # Resized in its own mode, before _to_rgb: converting a 16-bit or float upload at full size
    # would take several times the 4 bytes per pixel its decoding may. Pillow resizes every mode;
    # only averaged palette indices and hue angles would be meaningless.
    if image.mode in ("PA", "HSV"):
        image = _to_rgb(image)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS if scale > 1 else Image.Resampling.BOX)


def _to_rgb(image: Image.Image) -> Image.Image:
    """An RGB copy; transparency is flattened onto white, as a viewer would show it."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        # 16-bit and float pixels would clip to white on a plain convert; stretch them instead.
        low, high = image.getextrema()
        scale = 255 / (high - low) if high > low else 1
        image = image.convert("F").point(lambda v: (v - low) * scale).convert("L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _dominant_colours(small: Image.Image, top: int = 5) -> list[dict]:
    quantized = small.quantize(colors=16, method=Image.Quantize.MEDIANCUT)
    palette = quantized.getpalette() or []
    counts = sorted(quantized.getcolors() or [], reverse=True)
    total = sum(count for count, _ in counts) or 1
    kept: list[list] = []  # [rgb, share], largest first
    for count, index in counts:
        rgb = tuple(palette[index * 3:index * 3 + 3])
        # Median cut splits anti-aliased edges into near-identical shades; a person would
        # call them one colour, so fold them into the nearest bigger one.
        near = next((k for k in kept if sum((a - b) ** 2 for a, b in zip(k[0], rgb, strict=True)) < 32 ** 2), None)
        if near:
            near[1] += count / total
        else:
            kept.append([rgb, count / total])
    kept.sort(key=lambda k: -k[1])
    return [{"hex": "#{:02x}{:02x}{:02x}".format(*rgb), "share": round(share, 3)} for rgb, share in kept[:top]]


def _exif_value(value) -> str | None:
    if isinstance(value, bytes):
        if len(value) > MAX_EXIF_VALUE:
            return None  # maker notes and thumbnails are binary blobs, not readable facts
        value = value.decode("utf-8", "replace")
    elif isinstance(value, tuple):
        value = ", ".join(_exif_value(v) or "" for v in value[:16])
    elif isinstance(value, float) or type(value).__name__ == "IFDRational":
        try:
            value = f"{float(value):g}"
        except (ZeroDivisionError, ValueError):
            return None
    text = " ".join(re.sub(r"[\x00-\x1f\x7f]+", " ", str(value)).split())
    return text[:MAX_EXIF_VALUE] or None


def _exif(image: Image.Image) -> dict:
    try:
        exif = image.getexif()
        sources = [(exif, ExifTags.TAGS)]
        for ifd, names in ((ExifTags.IFD.Exif, ExifTags.TAGS), (ExifTags.IFD.GPSInfo, ExifTags.GPSTAGS)):
            with contextlib.suppress(Exception):  # a malformed sub-IFD loses only itself
                sources.append((exif.get_ifd(ifd), names))
        readable = {}
        for tags, names in sources:
            for tag, value in tags.items():
                name = names.get(tag)
                if not name or name in ("ExifOffset", "GPSInfo", "MakerNote", "PrintImageMatching"):
                    continue
                text = _exif_value(value)
                if text and name not in readable:
                    readable[name] = text
                if len(readable) >= MAX_EXIF_TAGS:
                    return readable
        return readable
    except Exception:  # EXIF is a bonus; corrupt metadata must not reject a good image
        return {}


def _ocr(tesseract: str, gray: Image.Image) -> str | None:
    """Text in the image via the tesseract CLI, or None if OCR failed or timed out."""
    buffer = io.BytesIO()
    gray.save(buffer, format="PNG", compress_level=1)
    # One thread per OCR: several concurrent requests must not each grab every core.
    env = {**os.environ, "OMP_THREAD_LIMIT": "1"}
    try:
        # Fixed argument list, no shell: the image travels on stdin, never as a path or argument.
        completed = subprocess.run([tesseract, "stdin", "stdout"], input=buffer.getvalue(),  # noqa: S603
                                   capture_output=True, timeout=OCR_TIMEOUT_SECONDS, env=env,
                                   check=False)
    except (subprocess.TimeoutExpired, OSError):
        return None
    if completed.returncode != 0:
        return None
    text = completed.stdout.decode("utf-8", "replace")
    text = "\n".join(re.sub(r"[\x00-\x1f\x7f]", "", line).strip() for line in text.splitlines())
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def _colour_name(hex_: str) -> str:
    rgb = tuple(int(hex_[i:i + 2], 16) for i in (1, 3, 5))
    return min(_COLOUR_NAMES, key=lambda n: sum((a - b) ** 2 for a, b in zip(_COLOUR_NAMES[n], rgb, strict=True)))


def _colours_text(colours: list[dict]) -> str:
    return ", ".join(f"{_colour_name(c['hex'])} ({c['hex']}, {c['share']:.0%})" for c in colours)


def _brightness_word(value: float) -> str:
    return "very dark" if value < 0.15 else "dark" if value < 0.4 else \
        "medium" if value < 0.65 else "bright" if value < 0.9 else "very bright"


def _md_escape(text: str) -> str:
    return re.sub(r"([\\`*_{}\[\]<>()#+!|~])", r"\\\1", " ".join(str(text).split()))


def _fenced(text: str) -> str:
    # A fence longer than any backtick run inside, so OCR'd text cannot break out of it.
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}text\n{text}\n{fence}"


def _answer(result: ImageAnalysis, question: str) -> str | None:
    """A direct answer to the parts of ``question`` that the measurements can answer."""
    q = question.lower()
    answers = []
    if re.search(r"colou?r|hue|shade", q) and result.dominant_colours:
        main = result.dominant_colours[0]
        others = result.dominant_colours[1:]
        answers.append(f"It is mostly **{_colour_name(main['hex'])}** ({main['hex']}, "
                       f"{main['share']:.0%} of the image)"
                       + (f", then {_colours_text(others)}." if others else "."))
    if re.search(r"\b(text|say|says|said|read|written|writing|words?|ocr|caption|label)\b", q):
        if result.ocr_text:
            answers.append("It says:\n" + _fenced(result.ocr_text[:2000]))
        elif result.ocr_text == "":
            answers.append("I could not find any readable text in it.")
        else:
            answers.append("Text recognition (OCR) is not available on this server.")
    if re.search(r"\b(size|big|large|small|dimensions?|resolution|wide|width|tall|height|pixels?)\b", q):
        answers.append(f"It is {result.width} × {result.height} pixels "
                       f"({result.width * result.height / 1e6:.2g} megapixels).")
    if re.search(r"\b(bright|brightness|dark|light|exposure)\b", q):
        answers.append(f"It is {_brightness_word(result.brightness)} "
                       f"(mean brightness {result.brightness:.0%}).")
    if re.search(r"\b(format|type|file|png|jpe?g|gif|webp|tiff?|bmp)\b", q):
        answers.append(f"It is a {result.format} file.")
    if re.search(r"\b(exif|camera|phone|taken|when|date|metadata|lens|where|location|gps)\b", q):
        keys = [k for k in ("Make", "Model", "LensModel", "DateTimeOriginal", "DateTime",
                            "ImageDescription", "Artist", "Software") if k in result.exif]
        keys += [k for k in result.exif if k.startswith("GPS")][:4]
        if keys:
            answers.append("From its EXIF metadata: " + "; ".join(
                f"{k}: {_md_escape(result.exif[k])}" for k in keys) + ".")
        else:
            answers.append("It carries no camera metadata (EXIF) that could tell.")
    return "\n\n".join(answers) or None
