"""The writes of RAG documents: upload (with its chunks and the owner's share), share, delete, edit.

Who may do what is the callers' check (agents.documents.may_manage in the API, the admin's own
permissions there); these functions validate their input, write, and record the event last.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Q
from guardian.shortcuts import assign_perm

from accounts.models import Team, User
from accounts.services import team_group
from agents.actions._changes import changes, snapshot
from agents.documents import SHARE_PERMISSION
from agents.ingest import chunk_text, extract_text
from agents.models import Document, DocumentChunk
from audit import actions
from audit.services import record

EDITABLE = ("title", "owner_id", "organization_id")  # what the admin may change on a document


def _resource(document: Document) -> str:
    return f"document:{document.pk}"


def _about(document: Document) -> dict:
    """The event's description of a document: never its text."""
    return {"name": document.name, "kind": document.kind, "size": document.size, "sha256": document.sha256,
            "owner": document.owner.username if document.owner_id else None}


def _store(*, name: str, data: bytes, content_type: str | None, owner: User | None, builtin: bool) -> Document:
    """Extract, chunk and store; DocumentError (a message for the user) for unusable files, nothing stored."""
    extracted = extract_text(data, name, content_type, max_bytes=settings.RELAY_MAX_UPLOAD_BYTES)
    document = Document.objects.create(
        organization=owner.organization if owner else None, owner=owner, name=name[:255],
        title=(extracted.title or name)[:255], kind=extracted.kind, size=len(data),
        sha256=hashlib.sha256(data).hexdigest(), builtin=builtin,
    )
    DocumentChunk.objects.bulk_create(
        DocumentChunk(document=document, index=chunk.index, text=chunk.text, start_char=chunk.start_char,
                      end_char=chunk.end_char)
        for chunk in chunk_text(extracted.text)
    )
    if owner is not None:
        assign_perm(SHARE_PERMISSION, owner, document)
    return document


@transaction.atomic
def upload_document(owner: User, *, name: str, data: bytes, content_type: str | None) -> Document:
    """A user's document, read and indexed; an ingestion error (DocumentError) leaves no document, no event."""
    document = _store(name=name, data=data, content_type=content_type, owner=owner, builtin=False)
    record(actions.DOCUMENT_UPLOADED, actor=owner, organization=document.organization_id,
           resource=_resource(document), metadata=_about(document))
    return document


def load_builtin_docs(**kwargs) -> None:
    """Index Relay's own documentation (README and docs/) as built-in documents, once per version.

    Run by post_migrate: part of installing a version, not anyone's change, so not in the trail.
    """
    for path in [settings.BASE_DIR / "README.md", *sorted(Path(settings.BASE_DIR / "docs").glob("*.md"))]:
        if not path.is_file():
            continue
        data = path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        current = Document.objects.filter(builtin=True, name=path.name)
        if current.filter(sha256=digest).exists():
            continue
        with transaction.atomic():
            current.delete()
            _store(name=path.name, data=data, content_type="text/markdown", owner=None, builtin=True)


@transaction.atomic
def share_document(actor: User, document: Document, *, user_ids=(), team_ids=()) -> None:
    """Let users and teams of the document's organization read it; anyone else is a ValidationError."""
    user_ids, team_ids = sorted(set(user_ids)), sorted(set(team_ids))
    organization = Q(organization_id=document.organization_id)
    users = list(User.objects.filter(organization, pk__in=user_ids))
    teams = list(Team.objects.filter(organization, pk__in=team_ids))
    if len(users) != len(user_ids) or len(teams) != len(team_ids):
        raise ValidationError({"users": ["Share only with users and teams of the document's organization."]})
    for user in users:
        assign_perm(SHARE_PERMISSION, user, document)
    for team in teams:
        assign_perm(SHARE_PERMISSION, team_group(team), document)
    record(actions.DOCUMENT_SHARED, actor=actor, organization=document.organization_id,
           resource=_resource(document), metadata={**_about(document), "users": user_ids, "teams": team_ids})


@transaction.atomic
def delete_document(document: Document, *, actor: User | None = None) -> None:
    about, resource = _about(document), _resource(document)
    organization = document.organization_id
    document.delete()
    record(actions.DOCUMENT_DELETED, actor=actor, organization=organization, resource=resource, metadata=about)


@transaction.atomic
def save_document_edit(document: Document, *, actor: User | None = None) -> None:
    """Store the admin's edit of `document` (its EDITABLE fields) and record what changed."""
    before = snapshot(Document.objects.select_for_update().get(pk=document.pk), EDITABLE)
    document.save()
    record(actions.DOCUMENT_UPDATED, actor=actor, organization=document.organization_id,
           resource=_resource(document), metadata={**_about(document), "changes": changes(before, document)})
