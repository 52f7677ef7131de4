import io
import os
import time

import pytest
from pypdf import PdfReader, PdfWriter

from agents.ingest import Chunk, DocumentError, chunk_text, extract_text
from agents.tokenizer import count_tokens


def make_pdf(*lines: str, title: str | None = None) -> bytes:
    """A minimal but valid one-page PDF with a real text layer, built by hand."""
    def escape(s: str) -> str:
        return s.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")

    ops = ["BT", "/F1 12 Tf", "14 TL", "72 720 Td"]
    for line in lines:
        ops.append(f"({escape(line)}) Tj T*")
    ops.append("ET")
    stream = "\n".join(ops).encode("latin-1")
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
        b"/Resources << /Font << /F1 4 0 R >> >> /Contents 5 0 R >>",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Title (%s) >>" % escape(title or "").encode("latin-1"),
    ]
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for offset in offsets:
        out += b"%010d 00000 n \n" % offset
    out += (b"trailer\n<< /Size %d /Root 1 0 R /Info 6 0 R >>\nstartxref\n%d\n%%%%EOF\n"
            % (len(objects) + 1, xref))
    return bytes(out)


def encrypt(pdf: bytes, user_password: str) -> bytes:
    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(pdf)))
    writer.encrypt(user_password=user_password, owner_password="owner-secret", algorithm="AES-128")
    buffer = io.BytesIO()
    writer.write(buffer)
    return buffer.getvalue()


# --- PDF --------------------------------------------------------------------------------

def test_pdf_text_and_title_are_extracted():
    pdf = make_pdf("Relay routes every request through a budget check.", "Second line here.",
                   title="Budget notes")
    result = extract_text(pdf, "notes.pdf", "application/pdf")
    assert result.kind == "pdf"
    assert "Relay routes every request through a budget check." in result.text
    assert "Second line here." in result.text
    assert result.title == "Budget notes"


def test_pdf_is_sniffed_by_content_not_name():
    result = extract_text(make_pdf("Sniffed by magic bytes."), "upload.txt", "text/plain")
    assert result.kind == "pdf"
    assert "Sniffed by magic bytes." in result.text
    assert result.title == "upload"  # no /Title in the PDF: fall back to the file name


def test_password_protected_pdf_is_refused_clearly():
    locked = encrypt(make_pdf("Top secret plans."), user_password="hunter2")
    with pytest.raises(DocumentError, match=r"^This PDF is encrypted"):
        extract_text(locked, "secret.pdf")


def test_pdf_encrypted_with_empty_user_password_is_readable():
    # Owner-password-only PDFs (print/copy restrictions) open in any viewer; so should Relay.
    restricted = encrypt(make_pdf("Readable despite restrictions."), user_password="")
    assert "Readable despite restrictions." in extract_text(restricted, "r.pdf").text


@pytest.mark.parametrize("payload", [
    b"%PDF-1.7\n" + os.urandom(2000),
    b"%PDF-1.4\n1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\ntrailer << /Root 1 0 R >>\n",
    b"%PDF-",
])
def test_corrupt_pdf_is_a_document_error(payload):
    with pytest.raises(DocumentError, match=r"^This PDF (could not be read|has no extractable)"):
        extract_text(payload, "broken.pdf", "application/pdf")


def test_truncated_pdf_is_a_document_error():
    pdf = make_pdf("Cut short.")
    with pytest.raises(DocumentError):
        extract_text(pdf[: len(pdf) // 3], "cut.pdf")


def test_pdf_without_text_layer_is_refused():
    writer = PdfWriter()
    writer.add_blank_page(width=612, height=792)
    buffer = io.BytesIO()
    writer.write(buffer)
    with pytest.raises(DocumentError, match="no extractable text"):
        extract_text(buffer.getvalue(), "scan.pdf")


def test_garbage_named_pdf_is_unsupported():
    garbage = bytes(range(256)) * 20 + os.urandom(4096)
    with pytest.raises(DocumentError, match=r"^Unsupported file type"):
        extract_text(garbage, "report.pdf", "application/pdf")


@pytest.mark.parametrize("magic", [b"\x89PNG\r\n\x1a\n", b"PK\x03\x04", b"\xff\xd8\xff\xe0", b"\x7fELF"])
def test_known_binary_formats_are_unsupported(magic):
    with pytest.raises(DocumentError, match=r"^Unsupported file type"):
        extract_text(magic + b"abcdefgh" * 50, "notes.txt", "text/plain")


def test_size_cap():
    with pytest.raises(DocumentError, match="too large"):
        extract_text(b"a" * 1001, "big.txt", max_bytes=1000)
    assert extract_text(b"a" * 1000, "ok.txt", max_bytes=1000).text == "a" * 1000


def test_empty_file():
    with pytest.raises(DocumentError, match="empty"):
        extract_text(b"", "empty.txt")


# --- HTML -------------------------------------------------------------------------------

def test_html_drops_script_and_style_and_keeps_text():
    html = (b"<!DOCTYPE html><html><head><title>Release &amp; notes</title>"
            b"<style>body{color:red}</style><script>alert(1)</script></head>"
            b"<body><h1>Version 2</h1><p>Faster   streaming.</p><script type='x'>evil()</script>"
            b"<ul><li>One</li><li>Two &lt;3</li></ul><noscript>enable js</noscript></body></html>")
    result = extract_text(html, "page.txt", "text/plain")
    assert result.kind == "html"
    assert result.title == "Release & notes"
    assert "alert" not in result.text and "evil" not in result.text
    assert "color:red" not in result.text and "enable js" not in result.text
    assert "Faster streaming." in result.text
    assert "Version 2" in result.text
    assert "One\nTwo <3" in result.text


def test_html_with_unclosed_head_keeps_body_and_uses_h1_title():
    html = b"<html><head><meta charset='utf-8'><body><h1>Guide</h1><p>Body text</p>"
    result = extract_text(html, "guide.html")
    assert result.text.endswith("Body text")
    assert result.title == "Guide"


def test_html_legacy_charset_is_honoured():
    html = "<html><head><meta charset='iso-8859-1'></head><body>Café crème</body></html>"
    result = extract_text(html.encode("latin-1"), "menu.html")
    assert "Café crème" in result.text


def test_markdown_mentioning_html_stays_markdown():
    md = b"# Embedding\n\nPaste this:\n\n```\n<html><body>widget</body></html>\n```\n"
    result = extract_text(md, "embed.md")
    assert result.kind == "markdown"
    assert result.title == "Embedding"
    assert "<html><body>widget</body></html>" in result.text


# --- text and markdown ------------------------------------------------------------------

def test_plain_text_utf8_with_bom_and_crlf():
    data = "\ufeffHello Relay\r\nÜnïcode ✓ 👍\r\n".encode("utf-8")
    result = extract_text(data, "C:\\Users\\me\\hello.txt")
    assert result.kind == "text"
    assert result.text == "Hello Relay\nÜnïcode ✓ 👍\n"
    assert result.title == "hello"


def test_markdown_by_content_even_with_txt_name():
    md = b"# Title here\n\nSome text with a [link](https://example.com).\n\n- item one\n- item two\n"
    result = extract_text(md, "notes.txt")
    assert result.kind == "markdown"
    assert result.title == "Title here"


def test_markdown_by_extension():
    assert extract_text(b"just words", "readme.md").kind == "markdown"
    assert extract_text(b"just words", "readme.txt").kind == "text"


def test_invalid_utf8_text_never_crashes():
    data = "Résumé of the naïve café".encode("cp1252") + b"\x81\xff tail"
    result = extract_text(data, "legacy.txt")
    assert result.kind == "text"
    assert result.text.startswith("Résumé of the naïve café")
    assert result.text.endswith("tail")


def test_utf16_text_with_bom():
    result = extract_text("Hello from UTF-16 ✓".encode("utf-16"), "wide.txt")
    assert result.text == "Hello from UTF-16 ✓"


# --- chunking ---------------------------------------------------------------------------

def _check_chunks(text: str, chunks: list[Chunk], max_tokens: int):
    assert [c.index for c in chunks] == list(range(len(chunks)))
    for chunk in chunks:
        assert chunk.text == text[chunk.start_char:chunk.end_char]
        assert chunk.text == chunk.text.strip() and chunk.text
        assert count_tokens(chunk.text) <= max_tokens
    # Together the chunks cover every non-blank character, in order.
    covered = 0
    for chunk in chunks:
        assert text[covered:chunk.start_char].strip() == "" or chunk.start_char < covered
        covered = max(covered, chunk.end_char)
    assert text[covered:].strip() == ""


def test_short_text_is_one_chunk():
    text = "\n\n  A short note.  \n"
    chunks = chunk_text(text)
    assert chunks == [Chunk(0, "A short note.", 4, 17)]


def test_empty_text_has_no_chunks():
    assert chunk_text("") == [] and chunk_text(" \n\n\t ") == []


def test_chunks_end_on_paragraph_boundaries():
    paragraphs = [f"Paragraph {n} talks about topic {n}. It has a second sentence too." for n in range(12)]
    text = "\n\n".join(paragraphs)
    chunks = chunk_text(text, max_tokens=40, overlap_tokens=0)
    _check_chunks(text, chunks, 40)
    assert len(chunks) > 1
    for chunk in chunks:
        assert chunk.text.startswith("Paragraph ") and chunk.text.endswith("too.")
    assert "".join(c.text + "\n\n" for c in chunks).strip() == text  # no overlap: exact tiling


def test_long_paragraph_splits_on_sentences_with_overlap():
    sentences = [f"Sentence number {n} describes a detail." for n in range(40)]
    text = " ".join(sentences)
    chunks = chunk_text(text, max_tokens=50, overlap_tokens=10)
    _check_chunks(text, chunks, 50)
    assert len(chunks) >= 5
    for chunk in chunks:
        assert chunk.text.startswith("Sentence number") and chunk.text.endswith("detail.")
    for previous, current in zip(chunks, chunks[1:], strict=False):
        assert current.start_char < previous.end_char  # they overlap ...
        shared = text[current.start_char:previous.end_char]
        assert 0 < count_tokens(shared) <= 10  # ... by at most overlap_tokens
        assert current.end_char > previous.end_char  # ... and always make progress


def test_sentence_without_punctuation_is_cut_by_tokens():
    text = " ".join(f"word{n}" for n in range(500))
    chunks = chunk_text(text, max_tokens=60, overlap_tokens=5)
    _check_chunks(text, chunks, 60)
    assert len(chunks) > 5
    for previous, current in zip(chunks, chunks[1:], strict=False):
        assert current.start_char < previous.end_char
        assert text[current.start_char - 1] == " "  # overlap starts at a word, not mid-word


def test_chunking_unicode_and_cjk():
    text = "日本語の文章です。" * 200 + "\n\n" + "Ünïcödé 👍🏽 text. " * 100
    chunks = chunk_text(text, max_tokens=64, overlap_tokens=8)
    _check_chunks(text, chunks, 64)


def test_chunk_parameters_are_validated():
    with pytest.raises(ValueError):
        chunk_text("x", max_tokens=10, overlap_tokens=10)
    with pytest.raises(ValueError):
        chunk_text("x", max_tokens=0, overlap_tokens=0)


def test_chunking_a_large_document_is_fast():
    text = ("A sentence about retrieval. " * 8 + "\n\n") * 4000  # ~900 KB
    started = time.perf_counter()
    chunks = chunk_text(text)
    # Well under a second on an idle machine; a quadratic chunker would take hours, so a ceiling
    # generous enough for a loaded CI machine still tells them apart.
    assert time.perf_counter() - started < 30
    assert len(chunks) > 100
    assert all(count_tokens(c.text) <= 200 for c in chunks[:50])


@pytest.mark.parametrize("charset", ["zlib_codec", "rot13", "idna", "no-such-charset", "utf-16"])
def test_hostile_declared_charsets_never_crash(charset):
    html = b"<html><head><meta charset='" + charset.encode() + b"'></head><body>caf\xe9 ok</body></html>"
    try:
        result = extract_text(html, "page.html", f"text/html; charset={charset}")
    except DocumentError as error:
        assert str(error).startswith("Unsupported file type")
    else:
        assert result.kind == "html" and "ok" in result.text


def test_text_that_mentions_the_pdf_magic_is_still_text():
    result = extract_text(b"Notes: every PDF starts with %PDF-1.x in its header.", "notes.txt")
    assert result.kind == "text"
