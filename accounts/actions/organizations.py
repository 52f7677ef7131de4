"""Organizations (tenants): created from the command line, changed and deleted in the admin."""

from __future__ import annotations

import secrets

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils.text import slugify

from accounts.models import Organization
from audit import actions
from audit.services import record


def _event(action: str, organization: Organization, pk=None, *, actor=None) -> None:
    # A deleted organization's event belongs to the actor's (a pointer to the deleted row cannot exist).
    pk, tenant = (organization.pk, organization.pk) if pk is None else (pk, None)
    record(action, actor=actor, resource=f"organization:{pk}", organization=tenant,
           metadata={"name": organization.name, "slug": organization.slug, "time_zone": organization.time_zone})


@transaction.atomic
def create_organization(name: str, *, time_zone: str = "UTC", actor=None) -> Organization:
    name = (name or "").strip()
    if not name:
        raise ValidationError({"name": "An organization needs a name."})
    slug = slugify(name)[:200] or secrets.token_hex(4)
    if Organization.objects.filter(name=name).exists():
        raise ValidationError({"name": f"An organization named {name!r} already exists."})
    org = Organization(name=name, slug=slug, time_zone=time_zone)
    org.full_clean()
    org.save()
    _event(actions.ORGANIZATION_CREATED, org, actor=actor)
    return org


@transaction.atomic
def save_organization(organization: Organization, *, actor=None) -> Organization:
    """An organization as edited in the admin (its form has validated it)."""
    created = organization.pk is None
    organization.save()
    _event(actions.ORGANIZATION_CREATED if created else actions.ORGANIZATION_UPDATED, organization, actor=actor)
    return organization


@transaction.atomic
def delete_organization(organization: Organization, *, actor=None) -> None:
    pk = organization.pk
    organization.delete()
    # The event names an organization that no longer exists: its id is kept as a plain reference.
    _event(actions.ORGANIZATION_DELETED, organization, pk, actor=actor)
