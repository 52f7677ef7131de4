"""Uploads built to amplify are refused within their ceilings (docs/security.md, "Bounded work").

A few KB of PDF can make a parser decode gigabytes (many pages sharing one compressed content
stream) and an image header can declare a canvas of billions of pixels. Every upload has a
ceiling on decoded bytes, extracted characters and parsing time, enforced while parsing:
what exceeds a size ceiling is 413 `payload_too_large`, what exceeds the time ceiling is 422
`too_complex`, and nothing is stored.
"""

import base64
import io
import time
import zlib

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import override_settings
from django.urls import reverse
from PIL import Image

from agents import ingest
from agents.ingest import DocumentError, extract_text
from agents.models import Document, DocumentChunk
from tests.agents.test_vision import png_claiming_size
from tests.conftest import assert_envelope

LINE = b"(Relay reads this line again and again) Tj T*\n"


def _pdf(objects: dict[int, bytes]) -> bytes:
    out = bytearray(b"%PDF-1.4\n")
    offsets = {}
    for number in sorted(objects):
        offsets[number] = len(out)
        out += b"%d 0 obj\n" % number + objects[number] + b"\nendobj\n"
    xref, size = len(out), max(objects) + 1
    out += b"xref\n0 %d\n0000000000 65535 f \n" % size
    for number in range(1, size):
        out += b"%010d 00000 n \n" % offsets[number]
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (size, xref)
    return bytes(out)


def _content(lines: int, line: bytes = LINE) -> bytes:
    return b"BT /F1 12 Tf 14 TL 72 720 Td\n" + line * lines + b"ET\n"


def _stream(data: bytes) -> bytes:
    packed = zlib.compress(data, 9)
    return b"<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(packed) + packed + b"\nendstream"


def shared_stream_pdf(*, fanout: int = 10, depth: int = 3, lines: int = 2000) -> bytes:
    """fanout**depth pages, all one page object with one compressed content stream.

    The page tree references the same node `fanout` times at each level, so the file stays a
    few KB while a reader sees 1000 pages, each decoding the whole stream.
    """
    leaf, font, content = 2 + depth, 3 + depth, 4 + depth
    objects = {1: b"<< /Type /Catalog /Pages 2 0 R >>"}
    for level in range(depth):
        number = 2 + level
        parent = b" /Parent %d 0 R" % (number - 1) if level else b""
        kids = b" ".join(b"%d 0 R" % (number + 1) for _ in range(fanout))
        objects[number] = b"<< /Type /Pages /Kids [%s] /Count %d%s >>" % (kids, fanout ** (depth - level), parent)
    objects[leaf] = (b"<< /Type /Page /Parent %d 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 %d 0 R >> >>"
                     b" /Contents %d 0 R >>" % (leaf - 1, font, content))
    objects[font] = b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"
    objects[content] = _stream(_content(lines))
    return _pdf(objects)


def distinct_pages_pdf(pages: int, lines: int) -> bytes:
    """An ordinary PDF: `pages` pages, each with its own content stream."""
    objects = {1: b"<< /Type /Catalog /Pages 2 0 R >>", 3: b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"}
    kids = []
    for index in range(pages):
        page, content = 4 + 2 * index, 5 + 2 * index
        kids.append(b"%d 0 R" % page)
        objects[page] = (b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 3 0 R >> >>"
                         b" /Contents %d 0 R >>" % content)
        objects[content] = _stream(_content(lines, b"(Page %d says something worth reading) Tj T*\n" % index))
    objects[2] = b"<< /Type /Pages /Kids [%s] /Count %d >>" % (b" ".join(kids), pages)
    return _pdf(objects)


def upload(client, name, data, content_type="application/pdf"):
    return client.post(reverse("document-list"), {"file": SimpleUploadedFile(name, data, content_type)},
                       format="multipart")


def encode(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


# --- documents through the upload API ------------------------------------------------------

@pytest.mark.django_db
@pytest.mark.timeout(120)
def test_a_pdf_whose_pages_share_one_content_stream_is_refused_quickly(users, client_for):
    bomb = shared_stream_pdf()  # 1000 pages x 90 KB decoded: about 90 MB of content from ~1 KB
    assert len(bomb) < 4096
    started = time.monotonic()
    response = upload(client_for(users["user"]), "bomb.pdf", bomb)
    elapsed = time.monotonic() - started
    error = assert_envelope(response, 413, "payload_too_large")
    assert "decoded" in error["message"], error
    # Refused by counting decoded bytes, not after extracting 1000 pages (which takes minutes).
    assert elapsed < 10, elapsed
    assert not Document.objects.filter(name="bomb.pdf").exists()
    assert DocumentChunk.objects.count() == 0 or not DocumentChunk.objects.filter(document__name="bomb.pdf").exists()


@pytest.mark.django_db
def test_one_content_stream_over_its_ceiling_is_refused(users, client_for):
    big_page = distinct_pages_pdf(1, 40_000)  # one page, ~1.8 MB decoded from ~10 KB
    with override_settings(RELAY_MAX_STREAM_BYTES=1024 * 1024):
        error = assert_envelope(upload(client_for(users["user"]), "page.pdf", big_page), 413, "payload_too_large")
    assert "decoded" in error["message"], error
    assert not Document.objects.filter(name="page.pdf").exists()


@pytest.mark.django_db
def test_extracted_text_has_a_ceiling_for_every_kind_of_document(users, client_for):
    client = client_for(users["user"])
    with override_settings(RELAY_MAX_EXTRACTED_CHARS=5000):
        text = assert_envelope(upload(client, "long.txt", b"All work and no play. " * 400, "text/plain"),
                               413, "payload_too_large")
        html = assert_envelope(upload(client, "long.html", b"<html><body>" + b"<p>Dull boy.</p>" * 800, "text/html"),
                               413, "payload_too_large")
        pdf = assert_envelope(upload(client, "long.pdf", distinct_pages_pdf(20, 20)), 413, "payload_too_large")
        assert upload(client, "short.txt", b"Short and sweet.", "text/plain").status_code == 201
    for error in (text, html, pdf):
        assert "characters" in error["message"], error
    assert not Document.objects.filter(name__startswith="long.").exists()


def test_the_text_ceiling_stops_a_pdf_while_its_pages_are_read(monkeypatch, settings):
    from pypdf import PageObject

    extracted = []
    real = PageObject.extract_text

    def counting(self, *args, **kwargs):
        extracted.append(1)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(PageObject, "extract_text", counting)
    settings.RELAY_MAX_EXTRACTED_CHARS = 1000  # each page has ~800 characters
    with pytest.raises(DocumentError, match="characters"):
        extract_text(distinct_pages_pdf(50, 20), "long.pdf")
    assert len(extracted) <= 2, f"{len(extracted)} of 50 pages read before the ceiling stopped the parse"


def test_the_time_ceiling_is_checked_while_pages_are_read(monkeypatch, settings):
    # Time as an input: a clock that advances one second per reading.
    ticks = iter(range(10**6))
    monkeypatch.setattr(ingest, "_clock", lambda: float(next(ticks)))
    settings.RELAY_MAX_PARSE_SECONDS = 5
    with pytest.raises(DocumentError, match="too long") as refused:
        extract_text(distinct_pages_pdf(50, 20), "slow.pdf")
    assert refused.value.status == 422
    assert next(ticks) < 200  # stopped soon after the deadline, not after all 50 pages


@pytest.mark.django_db
def test_time_ceiling_answers_422_through_the_api(users, client_for, monkeypatch):
    ticks = iter(range(10**6))
    monkeypatch.setattr(ingest, "_clock", lambda: float(next(ticks)))
    with override_settings(RELAY_MAX_PARSE_SECONDS=3):
        error = assert_envelope(upload(client_for(users["user"]), "slow.pdf", distinct_pages_pdf(30, 5)),
                                422, "too_complex")
    assert "too long" in error["message"]
    assert not Document.objects.filter(name="slow.pdf").exists()


# html.parser's close() on Python 3.11 scans to the end of the document once per "<" of an
# unfinished tag at its end (CVE-2025-6069): 200,000 of them took 140 s.
UNFINISHED_TAGS = b"<a" * 300_000


@pytest.mark.timeout(60)
def test_an_unfinished_tag_at_the_end_of_html_is_read_in_one_pass():
    # Control: agents.ingest._close hands a tail with no ">" over as text at once.
    started = time.monotonic()
    extracted = extract_text(b"<html><body><p>Hello</p>" + UNFINISHED_TAGS, "x.html",
                             ceilings=ingest.Ceilings(seconds=1))
    assert time.monotonic() - started < 5
    assert extracted.kind == "html" and extracted.text.startswith("Hello\n\n<a<a"), extracted.text[:40]


@pytest.mark.timeout(60)
def test_the_time_ceiling_holds_inside_html_parsers_own_loops():
    # Control: _TextExtractor.handle_data checks the clock. The ">" of the unclosed comment keeps
    # the tail off the one-pass path, so close() goes quadratic and only the ceiling stops it.
    started = time.monotonic()
    with pytest.raises(DocumentError, match="too long") as refused:
        extract_text(b"<html><body><!-- >" + UNFINISHED_TAGS, "x.html", ceilings=ingest.Ceilings(seconds=1))
    assert refused.value.status == 422
    assert time.monotonic() - started < 5


@pytest.mark.django_db
def test_an_image_is_not_a_document(users, client_for):
    # Images are not ingested (no OCR on upload): even a bomb header is refused before decoding.
    error = assert_envelope(upload(client_for(users["user"]), "bomb.png", png_claiming_size(100_000, 100_000),
                                   "image/png"), 400, "invalid")
    assert "Unsupported" in error["message"]


# --- images to the vision agent --------------------------------------------------------------

@pytest.mark.django_db
@pytest.mark.parametrize("width, height", [(100_000, 100_000), (7_000, 7_000), (65_535, 1_000)])
def test_vision_refuses_images_declaring_huge_dimensions(users, client_for, width, height):
    image = SimpleUploadedFile("bomb.png", png_claiming_size(width, height), "image/png")
    started = time.monotonic()
    response = client_for(users["user"]).post(reverse("vision-analyze"), {"image": image}, format="multipart")
    error = assert_envelope(response, 413, "payload_too_large")
    assert f"{width} × {height}" in error["message"], error
    assert time.monotonic() - started < 10


@pytest.mark.django_db
def test_vision_refuses_a_real_decompression_bomb(users, client_for):
    bomb = encode(Image.new("L", (8_000, 8_000)))  # 64 megapixels of black in a few dozen KB
    assert len(bomb) < 200_000
    image = SimpleUploadedFile("black.png", bomb, "image/png")
    response = client_for(users["user"]).post(reverse("vision-analyze"), {"image": image}, format="multipart")
    assert_envelope(response, 413, "payload_too_large")


@pytest.mark.django_db
def test_a_huge_image_over_sse_is_refused_before_the_stream(users, client_for):
    body = {"query": "What is this?", "agent_type": "vision",
            "image": base64.b64encode(png_claiming_size(20_000, 20_000)).decode()}
    response = client_for(users["user"]).post(reverse("stream"), body, format="json")
    assert_envelope(response, 413, "payload_too_large")
