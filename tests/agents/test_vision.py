import asyncio
import io
import os
import resource
import shutil
import threading
import time
import uuid
import zlib
from types import SimpleNamespace

import pytest
from PIL import Image, ImageDraw, ImageFile, ImageFont

from agents.tools import vision
from agents.tools.vision import ImageAnalysis, InvalidImage, analyze_image, analyze_image_async

NOT_AN_IMAGE = "This file is not an image Relay can read (PNG, JPEG, GIF, WebP, BMP, TIFF)."


def encode(image: Image.Image, fmt: str = "PNG", **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def png_claiming_size(width: int, height: int) -> bytes:
    """A tiny real PNG whose IHDR header is patched to claim another size (a classic bomb)."""
    data = bytearray(encode(Image.new("1", (1, 1))))
    assert data[12:16] == b"IHDR"
    data[16:20] = width.to_bytes(4, "big")
    data[20:24] = height.to_bytes(4, "big")
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")
    return bytes(data)


def require_tesseract():
    if shutil.which("tesseract"):
        return
    if os.environ.get("RELAY_REQUIRE_SERVICES") == "1":
        pytest.fail("tesseract is required (RELAY_REQUIRE_SERVICES=1) but not installed")
    pytest.skip("tesseract is not installed; OCR cannot be tested here")


def text_image(text: str = "RELAY 42") -> bytes:
    image = Image.new("RGB", (420, 120), "white")
    ImageDraw.Draw(image).text((20, 20), text, fill="black", font=ImageFont.load_default(size=64))
    return encode(image)


# --- basics -----------------------------------------------------------------------------

def test_solid_red_png():
    result = analyze_image(encode(Image.new("RGB", (64, 48), (255, 0, 0))), ocr=False)
    assert (result.format, result.width, result.height, result.mode) == ("PNG", 64, 48, "RGB")
    assert result.dominant_colours[0] == {"hex": "#ff0000", "share": 1.0}
    assert result.ocr_text is None  # OCR was not requested
    summary = result.summary_markdown()
    assert "64 × 48" in summary and "PNG" in summary and "red" in summary


def test_colour_question_is_answered_with_dominant_colours():
    image = Image.new("RGB", (100, 100), (0, 0, 255))
    ImageDraw.Draw(image).rectangle((0, 0, 99, 29), fill=(255, 255, 0))  # 30% yellow band
    result = analyze_image(encode(image), question="What colour is it?", ocr=False)
    colours = {c["hex"]: c["share"] for c in result.dominant_colours}
    assert colours == {"#0000ff": 0.7, "#ffff00": 0.3}
    summary = result.summary_markdown()
    assert summary.startswith("You asked: *What colour is it?*")
    assert "mostly **blue** (#0000ff, 70% of the image)" in summary
    assert "yellow (#ffff00, 30%)" in summary


def test_brightness_of_black_white_and_grey():
    def brightness(colour):
        return analyze_image(encode(Image.new("RGB", (32, 32), colour)), ocr=False).brightness
    assert brightness("black") == 0.0
    assert brightness("white") == 1.0
    assert brightness((128, 128, 128)) == pytest.approx(0.5, abs=0.01)


def test_transparent_pixels_count_as_white_background():
    result = analyze_image(encode(Image.new("RGBA", (20, 20), (0, 0, 0, 0))), ocr=False)
    assert result.mode == "RGBA"
    assert result.brightness == 1.0


@pytest.mark.parametrize("fmt,mode", [("GIF", "P"), ("WEBP", "RGB"), ("BMP", "RGB"),
                                      ("TIFF", "I;16"), ("JPEG", "L")])
def test_other_formats_and_modes(fmt, mode):
    image = Image.new(mode, (40, 30), 200 if mode in ("L", "P") else (200 if mode == "I;16" else "green"))
    result = analyze_image(encode(image, fmt), ocr=False)
    assert result.format == fmt and (result.width, result.height) == (40, 30)
    assert result.dominant_colours and 0 <= result.brightness <= 1


def test_exif_round_trip_from_jpeg():
    exif = Image.Exif()
    exif[0x010E] = "A red test card"  # ImageDescription
    exif[0x010F] = "RelayCam"  # Make
    exif[0x0110] = "Model\x00 X"  # Model, with a control character to be cleaned
    exif.get_ifd(0x8769)[0x9003] = "2024:05:01 12:30:00"  # DateTimeOriginal
    data = encode(Image.new("RGB", (32, 32), "red"), "JPEG", exif=exif)
    result = analyze_image(data, question="Which camera took this, and when?", ocr=False)
    assert result.exif["ImageDescription"] == "A red test card"
    assert result.exif["Make"] == "RelayCam"
    assert result.exif["Model"] == "Model X"
    assert result.exif["DateTimeOriginal"] == "2024:05:01 12:30:00"
    assert "ExifOffset" not in result.exif
    summary = result.summary_markdown()
    assert "Make: RelayCam" in summary and "DateTimeOriginal: 2024:05:01 12:30:00" in summary


def test_image_without_exif_says_so():
    result = analyze_image(encode(Image.new("RGB", (8, 8))), question="when was it taken?", ocr=False)
    assert result.exif == {}
    assert "no camera metadata" in result.summary_markdown()


def test_unanswerable_question_is_honest():
    result = analyze_image(encode(Image.new("RGB", (8, 8))), question="Is this a cat?", ocr=False)
    assert "needs a vision model" in result.summary_markdown()


def test_ocr_text_cannot_break_out_of_its_code_fence():
    analysis = ImageAnalysis("PNG", 1, 1, "RGB", ocr_text="```\n# injected", ocr_available=True)
    summary = analysis.summary_markdown()
    assert "````text\n```\n# injected\n````" in summary


# --- hostile input ----------------------------------------------------------------------

@pytest.mark.parametrize("data", [os.urandom(4096), b"", b"hello, I am text", b"\x89PNG\r\n\x1a\n"])
def test_non_images_are_refused(data):
    with pytest.raises(InvalidImage) as error:
        analyze_image(data)
    assert str(error.value) == NOT_AN_IMAGE


@pytest.mark.parametrize("fmt", ["EPS", "ICO", "PPM", "TGA"])
def test_formats_outside_the_allow_list_are_refused(fmt):
    # EPS in particular would make Pillow run Ghostscript on the upload.
    data = encode(Image.new("RGB", (16, 16), "red"), fmt) if fmt != "EPS" else (
        b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n0 0 moveto showpage\n")
    with pytest.raises(InvalidImage, match="not an image Relay can read"):
        analyze_image(data, ocr=False)


def test_animated_gif_reports_first_frame():
    frames = [Image.new("RGB", (20, 20), colour) for colour in ("red", "blue", "green")]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=100)
    result = analyze_image(buffer.getvalue(), ocr=False)
    assert result.animated is True
    assert result.dominant_colours[0]["hex"] == "#ff0000"
    assert "animated" in result.summary_markdown()


def test_large_photo_is_analysed_quickly():
    photo = Image.effect_noise((3000, 2000), 40).convert("RGB")
    data = encode(photo, "JPEG", quality=80)
    started = time.perf_counter()
    result = analyze_image(data, ocr=False)
    # Well under a second on an idle machine: the ceiling only has to catch work on full-size
    # pixels per pixel in Python (minutes), so it is generous for a loaded CI machine.
    assert time.perf_counter() - started < 30
    assert (result.width, result.height) == (3000, 2000)
    assert 0.3 < result.brightness < 0.7


@pytest.mark.parametrize("ocr", [False, True], ids=["colours", "colours-and-ocr"])
def test_a_16_bit_image_is_reduced_before_its_pixels_are_converted(monkeypatch, ocr):
    # Stretching 16-bit pixels to 8 goes through floats and RGB, 4 bytes a pixel each: done at full
    # size, a small compressed 40 MP upload peaked near 400 MB, not the 4 decoded bytes a pixel
    # the pixel ceiling promises. (tracemalloc cannot tell: Pillow allocates outside Python.)
    limits = [256 * 256]
    if ocr:
        require_tesseract()
        monkeypatch.setattr(vision, "OCR_MAX_PIXELS", 2_000_000)  # below the upload, so the page is reduced too
        limits.append(2_000_000)
    converted = []
    real = vision._to_rgb

    def spy(image):
        converted.append(image.size)
        return real(image)
    monkeypatch.setattr(vision, "_to_rgb", spy)
    image = Image.new("I;16", (4000, 3000), 60000)
    image.paste(1000, (0, 0, 1000, 3000))  # a dark quarter
    result = analyze_image(encode(image), ocr=ocr)
    assert (result.width, result.height, result.mode) == (4000, 3000, "I;16")
    colours = {c["hex"]: c["share"] for c in result.dominant_colours}
    assert colours["#ffffff"] == pytest.approx(0.75, abs=0.01) and colours["#000000"] == pytest.approx(0.25, abs=0.01)
    assert result.brightness == pytest.approx(0.75, abs=0.01)
    assert len(converted) == len(limits)
    for (width, height), limit in zip(converted, limits, strict=True):
        assert width * height <= limit * 1.01, (width, height)  # rounding a side may add a little


def test_truncated_image_is_refused():
    image = Image.effect_noise((200, 200), 60).convert("RGB")  # noise: compresses poorly
    data = encode(image)
    with pytest.raises(InvalidImage, match="not an image Relay can read"):
        analyze_image(data[: len(data) // 2], ocr=False)


def test_decompression_bomb_is_refused_before_decoding(monkeypatch):
    def must_not_decode(self):
        raise AssertionError("pixels were decoded")
    monkeypatch.setattr(ImageFile.ImageFile, "load", must_not_decode)
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    for width, height in [(100_000, 100_000), (7_000, 7_000), (65_535, 1_000)]:
        with pytest.raises(InvalidImage, match="too large"):
            analyze_image(png_claiming_size(width, height))
    assert time.perf_counter() - started < 10  # generous: must_not_decode already proves nothing was decoded
    grown_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before
    assert grown_kb < 50_000  # a decoded 100000² bitmap would need gigabytes


def test_pixel_limit_is_a_parameter():
    data = encode(Image.new("L", (2000, 1000)))
    with pytest.raises(InvalidImage, match=r"2000 × 1000 pixels; the limit is 1 megapixels"):
        analyze_image(data, max_pixels=1_000_000)
    assert analyze_image(data, max_pixels=2_000_000, ocr=False).width == 2000


# --- OCR --------------------------------------------------------------------------------

def test_ocr_reads_large_text():
    require_tesseract()
    result = analyze_image(text_image(), question="What does it say?")
    assert result.ocr_available is True
    assert "RELAY" in result.ocr_text
    assert "42" in result.ocr_text
    assert "It says:" in result.summary_markdown()


def test_ocr_reads_dark_text_on_a_transparent_background():
    require_tesseract()
    image = Image.new("RGBA", (420, 120), (0, 0, 0, 0))  # transparent black: must become white
    ImageDraw.Draw(image).text((20, 20), "RELAY 42", fill=(0, 0, 0, 255), font=ImageFont.load_default(size=64))
    result = analyze_image(encode(image))
    assert "RELAY" in result.ocr_text


def test_ocr_on_image_without_text():
    require_tesseract()
    result = analyze_image(encode(Image.new("RGB", (200, 100), "white")), question="read the text")
    assert result.ocr_text == ""
    assert "could not find any readable text" in result.summary_markdown()


def test_missing_tesseract_is_reported_not_fatal(monkeypatch):
    monkeypatch.setattr(vision.shutil, "which", lambda name: None)
    result = analyze_image(text_image(), question="what is written here?")
    assert result.ocr_available is False and result.ocr_text is None
    assert "OCR) is not available" in result.summary_markdown()


def test_ocr_timeout_is_contained(monkeypatch):
    require_tesseract()

    def slow(*args, **kwargs):
        raise vision.subprocess.TimeoutExpired(args[0], kwargs.get("timeout"))
    monkeypatch.setattr(vision.subprocess, "run", slow)
    result = analyze_image(text_image())
    assert result.ocr_available is True and result.ocr_text is None


# --- async ------------------------------------------------------------------------------

@pytest.mark.asyncio
async def test_async_analysis_runs_off_the_event_loop(monkeypatch):
    loop_thread = threading.get_ident()
    seen = {}
    real = vision.analyze_image

    def spy(data, **kwargs):
        seen["thread"] = threading.get_ident()
        return real(data, **kwargs)
    monkeypatch.setattr(vision, "analyze_image", spy)
    # Two users: each analysis holds its user's heavy slot (RELAY_HEAVY_PER_USER is 1).
    first, second = (SimpleNamespace(pk=f"vision-{uuid.uuid4().hex}") for _ in range(2))
    results = await asyncio.gather(
        analyze_image_async(encode(Image.new("RGB", (10, 10), "blue")), user=first, ocr=False),
        analyze_image_async(encode(Image.new("RGB", (10, 10), "white")), user=second, ocr=False),
    )
    assert seen["thread"] != loop_thread
    assert [r.dominant_colours[0]["hex"] for r in results] == ["#0000ff", "#ffffff"]
    with pytest.raises(InvalidImage):
        await analyze_image_async(b"not an image", user=first)
