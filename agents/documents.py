"""RAG documents: who may see and manage what, and full-text retrieval (their writes: agents.actions.documents).

Visibility is decided by the scoping gate (accounts.scoping, DOCUMENT_RULE): built-in docs for
everyone; otherwise documents of the caller's organization that they own, that were shared with
them or their team (guardian object permissions), or all of them for an organization admin.
Reading their text, through any agent or tool, also needs `use_rag_agent` (`readable_documents`):
without it a caller — a key scoped to math, say — searches Relay's own documentation only. And it
never leaves the caller's own organization, superusers included: what is read lands in their
conversations, and from there in their organization's training data.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from django.db import connection
from django.db.models import Q, QuerySet

from accounts import scoping
from accounts.models import APIKey, User
from accounts.permissions import holds
from agents.models import Document, DocumentChunk
from agents.snippets import distinct

SHARE_PERMISSION = "agents.view_document_shared"
READ_PERMISSION = "use_rag_agent"
DOCUMENT_RULE = scoping.Rule(organization="organization", owner="owner", shared=SHARE_PERMISSION,
                             public=Q(builtin=True), requires={scoping.READ: READ_PERMISSION})
_WORD = re.compile(r"[^\W_]{2,}", re.UNICODE)
_STOP = frozenset(
    "a an and are as at be by can do does for from how i in is it me my of on or say says tell the this to "
    "was what when where which who why with you your about according document documents".split()
)


_CANDIDATES = 4  # candidates per passage returned, so that dropping repeats still fills the list


@dataclass
class Passage:
    document_id: int
    document_title: str
    chunk_index: int
    text: str
    score: float


def visible_documents(user: User) -> QuerySet[Document]:
    return scoping.restrict(Document.objects.all(), user)


def may_read_documents(user: User, api_key: APIKey | None) -> bool:
    """May this caller (the user, through this key or directly) read the text of their documents?"""
    return holds(user, api_key, READ_PERMISSION)


def readable_documents(user: User, api_key: APIKey | None) -> QuerySet[Document]:
    """The documents whose text this caller may read: what they see in their own organization (their
    own, without one), or Relay's own docs only.

    The gate shows a superuser every organization's documents, to manage; reading one into an
    answer would copy another tenant's text into this caller's conversation, so it stays home.
    """
    organization_id = getattr(user, "organization_id", None)  # None too for an anonymous caller (reads nothing)
    if organization_id is not None:
        home = Q(organization_id=organization_id)
    else:
        home = Q(organization__isnull=True, owner_id=user.pk)
    return scoping.restrict(Document.objects.all(), user, api_key, scoping.READ).filter(Q(builtin=True) | home)


def may_manage(user: User, document: Document, api_key: APIKey | None = None) -> bool:
    """Owners and organization admins (through a key with every permission) share and delete; others
    only read what was shared."""
    return not document.builtin and scoping.manages(user, document, api_key)


def search_terms(query: str, limit: int = 12) -> list[str]:
    words = []
    for word in _WORD.findall(query.lower()):
        if word not in _STOP and word not in words:
            words.append(word)
    return words[:limit]


def search(user: User, query: str, *, api_key: APIKey | None, limit: int = 4) -> list[Passage]:
    """The best chunks for query among the documents the caller may read (full-text search in the DB),
    each passage once: overlapping chunks and copies of one document are not repeated.

    api_key: the key the caller acts through (None: directly); it bounds what may be read.
    """
    terms = search_terms(query)
    if not terms:
        return []
    visible = readable_documents(user, api_key).values("pk")
    if connection.vendor == "postgresql":
        ranked = _search_postgres(terms, visible, limit * _CANDIDATES)
    else:
        ranked = _search_sqlite(terms, visible, limit * _CANDIDATES)
    return distinct(ranked)[:limit]


def _search_postgres(terms, visible, limit) -> list[Passage]:
    tsquery = " | ".join(terms)  # terms are letters/digits only, so safe for to_tsquery syntax
    chunks = (
        DocumentChunk.objects.filter(document__in=visible)
        .extra(  # noqa: S610 (constant SQL; the query text is a bound parameter)
            select={"score": "ts_rank(to_tsvector('english', agents_documentchunk.text), to_tsquery('english', %s))"},
            select_params=[tsquery],
            where=["to_tsvector('english', agents_documentchunk.text) @@ to_tsquery('english', %s)"],
            params=[tsquery],
        )
        .select_related("document")
        .order_by("-score", "id")[:limit]
    )
    return [_passage(chunk, chunk.score) for chunk in chunks]


def _search_sqlite(terms, visible, limit) -> list[Passage]:
    match = " OR ".join(f'"{term}"' for term in terms)  # quoted: FTS5 operators in text stay words
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT rowid, bm25(agents_chunk_fts) AS score FROM agents_chunk_fts WHERE agents_chunk_fts MATCH %s"
            " ORDER BY score LIMIT 200",
            [match],
        )
        scores = {rowid: -score for rowid, score in cursor.fetchall()}  # bm25: lower is better
    chunks = DocumentChunk.objects.filter(pk__in=list(scores), document__in=visible).select_related("document")
    best = sorted(chunks, key=lambda chunk: (-scores[chunk.pk], chunk.pk))[:limit]
    return [_passage(chunk, scores[chunk.pk]) for chunk in best]


def _passage(chunk: DocumentChunk, score: float) -> Passage:
    return Passage(document_id=chunk.document_id, document_title=str(chunk.document), chunk_index=chunk.index,
                   text=chunk.text, score=float(score))
