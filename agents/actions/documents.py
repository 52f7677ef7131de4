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
from guardian.shortcuts import assign_perm, get_groups_with_perms, get_users_with_perms, remove_perm

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


def shares_of(document: Document) -> tuple[list[int], list[int]]:
    """(user ids, team ids) the document is shared with, its owner's own share among them."""
    codename = SHARE_PERMISSION.split(".", 1)[1]
    users = get_users_with_perms(document, only_with_perms_in=[codename], with_group_users=False,
                                 with_superusers=False)
    groups = [group for group, perms in get_groups_with_perms(document, attach_perms=True).items() if codename in perms]
    return (sorted(users.values_list("pk", flat=True)),
            sorted(Team.objects.filter(group__in=groups).values_list("pk", flat=True)))


def _set_shares(document: Document, users: list[User], teams: list[Team]) -> dict:
    """Share with exactly these users and teams (of the document's organization); what changed."""
    if any(member.organization_id != document.organization_id for member in [*users, *teams]):
        raise ValidationError({"shared_users": ["Share only with users and teams of the document's organization."]})
    before_users, before_teams = shares_of(document)
    for user in users:
        if user.pk not in before_users:
            assign_perm(SHARE_PERMISSION, user, document)
    for user in User.objects.filter(pk__in=set(before_users) - {user.pk for user in users}):
        remove_perm(SHARE_PERMISSION, user, document)
    for team in teams:
        if team.pk not in before_teams:
            assign_perm(SHARE_PERMISSION, team_group(team), document)
    for team in Team.objects.filter(pk__in=set(before_teams) - {team.pk for team in teams}):
        remove_perm(SHARE_PERMISSION, team_group(team), document)
    after_users, after_teams = shares_of(document)
    found = {}
    if after_users != before_users:
        found["shared_users"] = [before_users, after_users]
    if after_teams != before_teams:
        found["shared_teams"] = [before_teams, after_teams]
    return found


@transaction.atomic
def save_document_edit(document: Document, *, actor: User | None = None, shares=None) -> None:
    """Store the admin's edit of `document` (its EDITABLE fields, and with `shares` = (users, teams)
    exactly whom it is shared with) and record what changed, in one event."""
    before = snapshot(Document.objects.select_for_update().get(pk=document.pk), EDITABLE)
    document.save()
    changed = changes(before, document)
    if shares is not None:
        changed.update(_set_shares(document, list(shares[0]), list(shares[1])))
    record(actions.DOCUMENT_UPDATED, actor=actor, organization=document.organization_id,
           resource=_resource(document), metadata={**_about(document), "changes": changed})
