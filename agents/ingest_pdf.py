"""PDF text extraction within the upload's ceilings (agents.ingest.Budget).

A PDF's cost is not its size: pages may share one compressed content stream, so a few KB can
make a reader decode and parse the same megabytes once per page. So the decoded size of every
page's content is counted before any text is extracted (a stream shared by N pages counts N
times, as N pages will parse it), pypdf refuses to decode one stream past the per-stream
ceiling, and while text is extracted the characters and the clock are checked per page and
every few hundred content-stream operators, inside pypdf's loop.
"""

from __future__ import annotations

import contextlib
import io
import logging

from agents.ingest import (
    _CONTROL,
    Budget,
    DocumentError,
    DocumentTooLarge,
    ExtractedText,
    _clean,
    _reason,
)

logger = logging.getLogger(__name__)

# Each page may legitimately inflate to megabytes of content streams; bound the total work.
MAX_PDF_PAGES = 2000
_TICK_EVERY = 256  # content-stream operators between two looks at the clock


def extract_pdf(data: bytes, fallback_title: str, budget: Budget) -> ExtractedText:
    # Imported lazily: pypdf is only needed when someone actually uploads a PDF.
    from pypdf import apply_configuration

    per_stream = budget.ceilings.stream_bytes
    # pypdf stops decompressing at these lengths (LimitReachedError) instead of inflating a bomb.
    limits = {name: per_stream for name in (
        "zlib_maximum_output_length", "lzw_maximum_output_length", "run_length_maximum_output_length",
        "brotli_maximum_output_length", "array_based_stream_maximum_output_length")}
    with apply_configuration(**limits):
        reader, pages = _open(data)
        _count_decoded(pages, budget)
        text = _clean("\n\n".join(t for t in _read_pages(pages, budget) if t))
        if not text.strip():
            raise DocumentError("This PDF has no extractable text (it may be a scanned image); "
                                "upload a PDF with a text layer or the images themselves.")
        title = ""
        with contextlib.suppress(Exception):  # broken metadata only costs the title
            title = str((reader.metadata or {}).get("/Title") or "").strip()
    return ExtractedText(text, "pdf", _CONTROL.sub("", title)[:200] or fallback_title)


def _open(data: bytes):
    from pypdf import PdfReader
    from pypdf.errors import DependencyError

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            # Many PDFs are "encrypted" with an empty user password and only restrict
            # printing or editing; those are readable without asking anyone.
            try:
                unlocked = reader.decrypt("")
            except DependencyError as exc:
                raise DocumentError(f"This PDF is encrypted with a method Relay cannot "
                                    f"open ({exc}).") from exc
            if not unlocked:
                raise DocumentError("This PDF is encrypted and needs a password; please "
                                    "upload an unprotected copy.")
        if len(reader.pages) > MAX_PDF_PAGES:
            raise DocumentError(f"This PDF has {len(reader.pages)} pages; Relay reads PDFs of "
                                f"up to {MAX_PDF_PAGES} pages.")
        return reader, list(reader.pages)
    except DocumentError:
        raise
    except Exception as exc:  # pypdf raises many exception types on corrupt files
        raise DocumentError(f"This PDF could not be read: {_reason(exc)}") from exc


def _too_large(budget: Budget) -> DocumentTooLarge:
    return DocumentTooLarge(f"A page of this PDF is larger than {budget.ceilings.stream_bytes / 1048576:g} MB once "
                            f"decoded; Relay reads pages of up to that size.")


def _count_decoded(pages, budget: Budget) -> None:
    """Charge every page's decoded content before extracting anything (decoding is cheap, parsing is not)."""
    from pypdf.errors import LimitReachedError

    for page in pages:
        try:
            contents = page.get_contents()
            size = len(contents.get_data()) if contents is not None else 0
        except LimitReachedError:
            raise _too_large(budget) from None
        except Exception:  # a damaged page is skipped when its text is read, too
            logger.debug("unreadable PDF page contents", exc_info=True)
            continue
        if size > budget.ceilings.stream_bytes:  # uncompressed, so no decoder stopped it
            raise _too_large(budget)
        budget.decoded(size, "This PDF")
        budget.check_time()


def _read_pages(pages, budget: Budget) -> list[str]:
    from pypdf.errors import LimitReachedError

    operators = 0

    def tick(*_):  # pypdf calls this for every operator, including those of nested forms
        nonlocal operators
        operators += 1
        if operators % _TICK_EVERY == 0:
            budget.check_time()

    def count(text, *_):
        budget.extracted(len(text))

    texts = []
    for page in pages:
        budget.check_time()
        try:
            texts.append((page.extract_text(visitor_operand_before=tick, visitor_text=count) or "").strip())
        except DocumentError:
            raise
        except LimitReachedError:  # a form or array content stream over the per-stream ceiling
            raise _too_large(budget) from None
        except Exception:  # one damaged page should not lose the rest of the document
            logger.debug("skipping an unreadable PDF page", exc_info=True)
    return texts
