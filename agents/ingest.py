"""Document text extraction and chunking for RAG.

Uploads are untrusted: the kind of a file is decided by sniffing its bytes, never by its name
or declared content type (those only break ties between plain text and Markdown), HTML is
parsed as text and never rendered, and every failure is a ``DocumentError`` whose message can
be shown to the user as a 4xx, never an unexpected exception that becomes a 500.

Every upload is bounded by ``Ceilings`` (decoded bytes, extracted characters, parse time), which
a ``Budget`` enforces while parsing: what exceeds a size is ``DocumentTooLarge`` (413), what
runs out of time is ``DocumentTooComplex`` (422).
"""

import codecs
import logging
import re
import time
from dataclasses import dataclass
from html import unescape as html_unescape
from html.parser import HTMLParser
from pathlib import PurePosixPath

from agents.tokenizer import count_tokens, split_tokens

logger = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 20 * 1024 * 1024
UNSUPPORTED = "Unsupported file type: Relay can read plain text, Markdown, HTML and PDF documents."


class DocumentError(ValueError):
    """A document that cannot be ingested; ``str(error)`` is safe to show the user."""

    status = 400


class DocumentTooLarge(DocumentError):
    """Decoded content or extracted text over its ceiling: 413, like a body over the size limit."""

    status = 413


class DocumentTooComplex(DocumentError):
    """A well-formed document that takes longer to parse than the ceiling allows: 422."""

    status = 422


@dataclass(frozen=True)
class Ceilings:
    stream_bytes: int = 4 * 1024 * 1024     # one decoded PDF content stream
    decoded_bytes: int = 64 * 1024 * 1024   # all pages' decoded content, a shared stream counted per page
    chars: int = 5_000_000                  # extracted text
    seconds: float = 20.0                   # parsing, wall clock

    @classmethod
    def from_settings(cls) -> "Ceilings":
        from django.conf import settings

        return cls(stream_bytes=settings.RELAY_MAX_STREAM_BYTES, decoded_bytes=settings.RELAY_MAX_DECODED_BYTES,
                   chars=settings.RELAY_MAX_EXTRACTED_CHARS, seconds=settings.RELAY_MAX_PARSE_SECONDS)


_clock = time.monotonic  # a module attribute, so tests can give time as an input


class Budget:
    """One upload's allowance, charged by the parsers as they go (not after the fact)."""

    def __init__(self, ceilings: Ceilings):
        self.ceilings = ceilings
        self.deadline = _clock() + ceilings.seconds
        self.decoded_total = 0
        self.chars_total = 0

    def decoded(self, size: int, what: str) -> None:
        self.decoded_total += size
        if self.decoded_total > self.ceilings.decoded_bytes:
            raise DocumentTooLarge(f"{what} is larger than {self.ceilings.decoded_bytes / 1048576:g} MB once decoded "
                                   f"(content shared by several pages counts once per page); Relay reads "
                                   f"documents of up to that size.")

    def extracted(self, chars: int) -> None:
        self.chars_total += chars
        self.check_chars(self.chars_total)

    def check_chars(self, chars: int) -> None:
        if chars > self.ceilings.chars:
            raise DocumentTooLarge(f"This document has more than {self.ceilings.chars:,} characters of text; "
                                   f"split it into smaller documents.")

    def check_time(self) -> None:
        if _clock() > self.deadline:
            raise DocumentTooComplex(f"This document takes too long to read (over {self.ceilings.seconds:g} "
                                     f"seconds); split it into smaller documents.")


@dataclass(frozen=True)
class ExtractedText:
    text: str
    kind: str  # "text", "markdown", "html" or "pdf"
    title: str


@dataclass(frozen=True)
class Chunk:
    index: int
    text: str
    start_char: int  # text == source[start_char:end_char]
    end_char: int


# Magic numbers of common binary formats, so they get a clear "unsupported" even when they
# happen to decode as some 8-bit text.
_BINARY_MAGIC = (b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"PK\x03\x04", b"\x1f\x8b", b"BM",
                 b"RIFF", b"\x7fELF", b"MZ", b"%!PS", b"{\\rtf", b"\xd0\xcf\x11\xe0", b"7z\xbc\xaf",
                 b"Rar!", b"II*\x00", b"MM\x00*", b"OggS", b"ID3", b"fLaC", b"\x00\x00\x01\x00")
_HTML_MARKERS = re.compile(rb"<!doctype\s+html|<html[\s>]|<head[\s>]|<body[\s>]|<title[\s>]",
                           re.IGNORECASE)
_MARKDOWN_MARKERS = re.compile(r"^(?:#{1,6} \S|```|[-*+] \S|\d+\. \S|> \S)|\[[^\]\n]+\]\([^)\s]+\)",
                               re.MULTILINE)
_MARKDOWN_EXTENSIONS = {".md", ".markdown", ".mdown", ".mkd"}
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")


def extract_text(data: bytes, filename: str, content_type: str | None = None, *,
                 max_bytes: int = DEFAULT_MAX_BYTES, ceilings: Ceilings | None = None) -> ExtractedText:
    """Extract the readable text of an uploaded document, sniffing its real type.

    ``ceilings`` default to the RELAY_MAX_* settings; exceeding one raises DocumentTooLarge or
    DocumentTooComplex while parsing.
    """
    if data is None or len(data) == 0:
        raise DocumentError("The file is empty.")
    if len(data) > max_bytes:
        raise DocumentError(f"This file is too large ({len(data) / 1048576:.1f} MB); the limit "
                            f"is {max_bytes / 1048576:.0f} MB.")
    budget = Budget(ceilings or Ceilings.from_settings())
    extracted = _extract(data, filename, content_type, budget)
    budget.check_chars(len(extracted.text))  # every kind, whatever its parser counted on the way
    return extracted


def _extract(data: bytes, filename: str, content_type: str | None, budget: Budget) -> ExtractedText:
    head = data[:1024]
    fallback_title = _title_from_filename(filename)
    # Readers accept junk before the header within the first KB; a text that merely
    # mentions "%PDF-" is not a PDF unless it also has a PDF's trailer.
    pdf_at = head.find(b"%PDF-")
    if pdf_at != -1 and (not head[:pdf_at].strip() or b"startxref" in data[-4096:]):
        from agents.ingest_pdf import extract_pdf

        return extract_pdf(data, fallback_title, budget)
    if head.startswith(_BINARY_MAGIC):
        raise DocumentError(UNSUPPORTED)
    # Markup must open the document, so Markdown that merely mentions <html> stays Markdown.
    start = data[:4096].lstrip(b"\xef\xbb\xbf \t\r\n")
    if start.startswith(b"<") and _HTML_MARKERS.search(start):
        text, title = _extract_html(_decode(data, content_type, html=True), budget)
        return ExtractedText(text, "html", title or fallback_title)
    text = _decode(data, content_type)
    budget.check_chars(len(text))
    suffix = PurePosixPath((filename or "").lower()).suffix
    declared_md = suffix in _MARKDOWN_EXTENSIONS or "markdown" in (content_type or "").lower()
    if declared_md or len(_MARKDOWN_MARKERS.findall(text[:20000])) >= 3:
        heading = re.search(r"^#\s+(.+?)\s*#*\s*$", text, re.MULTILINE)
        title = heading.group(1).strip() if heading else fallback_title
        return ExtractedText(text, "markdown", title[:200])
    return ExtractedText(text, "text", fallback_title)


def _title_from_filename(filename: str) -> str:
    # Browsers may send a full Windows path; only the last component is meaningful.
    name = re.split(r"[\\/]", filename or "")[-1]
    stem = name.rsplit(".", 1)[0] if "." in name.strip(".") else name
    return _CONTROL.sub("", stem).strip()[:200] or "Untitled document"


def _declared_charset(content_type: str | None, data: bytes, html: bool) -> str | None:
    sources = [content_type or ""]
    if html:
        sources.append(data[:4096].decode("ascii", "replace"))
    for source in sources:
        match = re.search(r"charset\s*=\s*[\"']?([\w.:-]+)", source, re.IGNORECASE)
        try:
            info = codecs.lookup(match.group(1)) if match else None
        except LookupError:
            continue  # a bogus charset is ignored, not an error
        # "zlib" or "rot13" are codecs but not text encodings; and the bytes were readable
        # as ASCII, so a UTF-16/32 declaration is wrong (browsers ignore it too).
        if info and getattr(info, "_is_text_encoding", True) and _ascii_compatible(info.name):
            return info.name
    return None


def _ascii_compatible(encoding: str) -> bool:
    try:
        return "charset<>".encode(encoding) == b"charset<>"
    except (UnicodeError, LookupError, TypeError):
        return False


def _decode(data: bytes, content_type: str | None, html: bool = False) -> str:
    """Decode text bytes, or raise DocumentError if they are not text at all."""
    for bom, encoding in ((codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"),
                          (codecs.BOM_UTF16_BE, "utf-16")):
        if data.startswith(bom):
            return _clean(data.decode(encoding, errors="replace"))
    if b"\x00" in data[:8192]:
        raise DocumentError(UNSUPPORTED)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        # Not UTF-8: trust a declared charset, else assume Windows-1252 (the usual legacy
        # encoding), always with errors="replace".
        try:
            text = data.decode(_declared_charset(content_type, data, html) or "cp1252", "replace")
        except (UnicodeError, LookupError):  # odd codecs (idna, punycode) refuse "replace"
            text = data.decode("cp1252", errors="replace")
    sample = text[:8192]
    # Binary data decoded as cp1252 is full of control characters and replacement marks;
    # real text has almost none.
    noise = len(_CONTROL.findall(sample)) + sample.count("\ufffd")
    if sample and noise / len(sample) > 0.05:
        raise DocumentError(UNSUPPORTED)
    return _clean(text)


def _clean(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return _CONTROL.sub("", text)


class _TextExtractor(HTMLParser):
    """Collects visible text; script, style and other non-content elements are dropped."""

    # Not "head": pages often never close it, which would hide the whole body.
    SKIP = {"script", "style", "noscript", "template", "svg", "math", "iframe", "object"}
    BLOCK = {"p", "div", "br", "li", "ul", "ol", "tr", "table", "section", "article", "header",
             "footer", "nav", "aside", "main", "h1", "h2", "h3", "h4", "h5", "h6", "pre",
             "blockquote", "dd", "dt", "figcaption", "hr", "form", "fieldset", "address"}

    def __init__(self, budget: Budget):
        super().__init__(convert_charrefs=True)
        self.budget = budget
        self.parts: list[str] = []
        self.skip_depth = 0
        self.pre_depth = 0
        self.title_parts: list[str] | None = None
        self.title = ""
        self.h1 = ""
        self.in_h1 = False

    def handle_starttag(self, tag, attrs):
        if tag == "body":
            self.skip_depth = 0  # an unclosed <noscript> or <svg> in the head must not hide the page
        if tag == "title" and not self.skip_depth:  # not an <svg><title> tooltip
            self.title_parts = []
        elif tag in self.SKIP:
            self.skip_depth += 1
        if tag == "pre":
            self.pre_depth += 1
        if tag == "h1" and not self.h1:
            self.in_h1 = True
        if tag in self.BLOCK:
            self.parts.append("\n\n" if tag not in ("br", "li", "tr") else "\n")

    def handle_startendtag(self, tag, attrs):
        if tag in self.BLOCK:  # <br/>, <hr/>: no content, so never touch the skip depth
            self.parts.append("\n")

    def handle_endtag(self, tag):
        if tag == "title" and self.title_parts is not None:
            self.title = self.title or " ".join("".join(self.title_parts).split())
            self.title_parts = None
        elif tag in self.SKIP and self.skip_depth:
            self.skip_depth -= 1
        if tag == "pre" and self.pre_depth:
            self.pre_depth -= 1
        if tag == "h1":
            self.in_h1 = False
        if tag in self.BLOCK and tag not in ("br", "li", "tr"):  # list items: one line each
            self.parts.append("\n\n")

    def handle_data(self, data):
        # Here too, not only between feeds: html.parser's own loops call this for each piece, and
        # some of them are quadratic (CVE-2025-6069 in close() on Python before 3.13.4).
        self.budget.check_time()
        if self.title_parts is not None:
            self.title_parts.append(data)
            return
        if self.skip_depth:
            return
        if self.in_h1:
            self.h1 += data
        # Outside <pre>, HTML collapses whitespace runs into one space.
        text = data if self.pre_depth else re.sub(r"\s+", " ", data)
        self.budget.extracted(len(text))
        self.parts.append(text)


_HTML_PIECE = 256 * 1024  # characters fed to the parser between two looks at the clock


def _extract_html(html: str, budget: Budget) -> tuple[str, str]:
    parser = _TextExtractor(budget)
    try:
        for start in range(0, len(html), _HTML_PIECE):
            parser.feed(html[start:start + _HTML_PIECE])
            budget.check_time()
        _close(parser)
    except DocumentError:
        raise
    except Exception:  # html.parser is lenient, but a malformed page must not become a 500: keep what was read
        logger.debug("malformed HTML, keeping the text read so far", exc_info=True)
    text = "".join(parser.parts)
    text = re.sub(r"[ \t]*\n[ \t]*", "\n", text)
    text = re.sub(r"\n{3,}", "\n\n", text).strip()
    title = parser.title or " ".join(parser.h1.split())
    return text, title[:200]


def _close(parser: _TextExtractor) -> None:
    """parser.close(), in one pass over an unfinished tag that runs to the end of the document.

    With no '>' left, nothing in the tail can end a tag, so close() hands it over as text, one
    '<' at a time, re-scanning to the end for each: quadratic (CVE-2025-6069), minutes for a few
    MB of "<a<a<a". The same text, given at once.
    """
    tail = parser.rawdata  # what feed() left unparsed, waiting for more input
    if tail.startswith("<") and ">" not in tail and not parser.cdata_elem:
        parser.rawdata = ""
        parser.handle_data(html_unescape(tail))
    parser.close()


def _reason(exc: Exception) -> str:
    return (" ".join(str(exc).split()) or type(exc).__name__)[:200]


# --- chunking ---------------------------------------------------------------------------

_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n\s*")
# A sentence ends at terminal punctuation (plus closing quotes/brackets) followed by
# whitespace, or at a line break, which in lists, tables and code marks a unit too.
_SENTENCE_END = re.compile(r"[.!?\u3002\uff01\uff1f]+[\"'\u201d\u2019)\]]*\s+|\n\s*")


@dataclass
class _Unit:
    start: int
    end: int  # includes the trailing whitespace, so units tile the text
    tokens: int
    paragraph_end: bool


def _units(text: str, max_tokens: int, overlap_tokens: int) -> list[_Unit]:
    units = []
    paragraph_starts = [0] + [m.end() for m in _PARAGRAPH_BREAK.finditer(text)]
    bounds = list(zip(paragraph_starts, paragraph_starts[1:] + [len(text)], strict=True))
    for p_start, p_end in bounds:
        tokens = count_tokens(text[p_start:p_end])
        if tokens <= max_tokens:
            units.append(_Unit(p_start, p_end, tokens, True))
            continue
        cuts = [m.end() for m in _SENTENCE_END.finditer(text, p_start, p_end)]
        starts = [p_start] + [c for c in cuts if p_start < c < p_end]
        for s_start, s_end in zip(starts, starts[1:] + [p_end], strict=True):
            tokens = count_tokens(text[s_start:s_end])
            if tokens <= max_tokens:
                units.append(_Unit(s_start, s_end, tokens, False))
                continue
            # A "sentence" longer than a whole chunk (no punctuation): cut it by tokens,
            # leaving room for the overlap the next chunk will carry.
            pieces = split_tokens(text[s_start:s_end])
            pos, step = s_start, max_tokens - overlap_tokens
            for i in range(0, len(pieces), step):
                group = pieces[i:i + step]
                length = sum(map(len, group))
                units.append(_Unit(pos, pos + length, len(group), False))
                pos += length
        units[-1].paragraph_end = True
    return units


def _overlap_start(text: str, units: list[_Unit], first: int, stop: int,
                   overlap_tokens: int) -> tuple[int, int] | None:
    """Where the next chunk starts so that it repeats about ``overlap_tokens`` of this one."""
    tokens, k = 0, stop
    while k - 1 > first and tokens + units[k - 1].tokens <= overlap_tokens:
        k -= 1
        tokens += units[k].tokens
    if k < stop:
        return units[k].start, tokens
    # Even the last sentence is longer than the overlap: repeat its tail from a word start.
    last = units[stop - 1]
    pieces = split_tokens(text[last.start:last.end].rstrip())
    tail = pieces[-overlap_tokens:] if len(pieces) > overlap_tokens else []
    offset = last.start + sum(map(len, pieces[:len(pieces) - len(tail)]))
    for n, piece in enumerate(tail):
        if piece[:1].isspace():
            return offset, len(tail) - n
        offset += len(piece)
    return None


def chunk_text(text: str, *, max_tokens: int = 200, overlap_tokens: int = 30) -> list[Chunk]:
    """Split ``text`` into chunks of at most ``max_tokens`` tokens for retrieval.

    Chunks end at paragraph boundaries where that keeps them at least half full, otherwise
    at sentence boundaries, and only cut inside a sentence that alone exceeds ``max_tokens``.
    Consecutive chunks share about ``overlap_tokens`` tokens so that a passage cut in two is
    still retrievable whole. ``chunk.text == text[chunk.start_char:chunk.end_char]``.
    """
    if max_tokens < 1:
        raise ValueError("max_tokens must be at least 1")
    if not 0 <= overlap_tokens < max_tokens:
        raise ValueError("overlap_tokens must be between 0 and max_tokens - 1")
    if not text or not text.strip():
        return []
    units = _units(text, max_tokens, overlap_tokens)
    chunks: list[Chunk] = []
    i, carry = 0, None
    while i < len(units):
        start, tokens = carry if carry else (units[i].start, 0)
        if tokens + units[i].tokens > max_tokens:
            start, tokens = units[i].start, 0  # the overlap must not push a chunk over the limit
        j, paragraph_cut = i, None
        while j < len(units) and (j == i or tokens + units[j].tokens <= max_tokens):
            tokens += units[j].tokens
            j += 1
            if units[j - 1].paragraph_end and tokens * 2 >= max_tokens:
                paragraph_cut = j
        if j < len(units) and paragraph_cut:
            j = paragraph_cut
        # Unit counts are per piece of text; across a boundary whitespace can tokenize a
        # little differently, so the real count of the chunk has the last word.
        while count_tokens(text[start:units[j - 1].end].strip()) > max_tokens:
            if j - 1 > i:
                j -= 1
            elif start != units[i].start:
                start = units[i].start
            else:
                break  # a single unit never exceeds max_tokens; this is only a safety stop
        end = units[j - 1].end
        segment = text[start:end]
        stripped_start = start + (len(segment) - len(segment.lstrip()))
        stripped_end = start + len(segment.rstrip())
        if stripped_end > stripped_start:
            chunks.append(Chunk(len(chunks), text[stripped_start:stripped_end],
                                stripped_start, stripped_end))
        carry = _overlap_start(text, units, i, j, overlap_tokens) if overlap_tokens else None
        i = j
    return chunks
