"""Teams: created through the API, by name with a new user, or in the admin; changed and deleted there."""

from __future__ import annotations

from django.contrib.auth.models import Group
from django.core.exceptions import ValidationError
from django.db import transaction

from accounts.models import Organization, Team
from audit import actions
from audit.services import record


def _event(action: str, team: Team, pk=None, *, actor=None) -> None:
    record(action, actor=actor, resource=f"team:{team.pk if pk is None else pk}",
           organization=team.organization_id, metadata={"name": team.name})


@transaction.atomic
def create_team(organization: Organization, name: str, *, actor=None) -> Team:
    name = (name or "").strip()
    if not name:
        raise ValidationError({"name": "A team needs a name."})
    if Team.objects.filter(organization=organization, name=name).exists():
        raise ValidationError({"name": "A team with this name already exists."})
    team = Team(organization=organization, name=name)
    team.full_clean()
    team.save()
    _event(actions.TEAM_CREATED, team, actor=actor)
    return team


@transaction.atomic
def save_team(team: Team, *, actor=None) -> Team:
    """A team as edited in the admin (its form has validated it)."""
    created = team.pk is None
    team.save()
    _event(actions.TEAM_CREATED if created else actions.TEAM_UPDATED, team, actor=actor)
    return team


@transaction.atomic
def delete_team(team: Team, *, actor=None) -> None:
    """The team goes; its members stay, without a team (Team.members is SET_NULL)."""
    pk = team.pk
    # Its sharing group goes too, with what was shared through it: the members' teams are cleared by
    # one update (Team.members is SET_NULL), which sync_team_group never sees. Read from the row: the
    # group may have been made (on a first share) since `team` was read.
    group_id = Team.objects.filter(pk=pk).values_list("group_id", flat=True).first()
    team.delete()
    if group_id is not None:
        Group.objects.filter(pk=group_id).delete()
    _event(actions.TEAM_DELETED, team, pk, actor=actor)


def resolve_team(organization: Organization, team: Team | str | int | None, *, actor=None) -> Team | None:
    """The team named (or with that id) inside the organization, created by name if new."""
    if team is None or team == "":
        return None
    if isinstance(team, Team):
        if team.organization_id != organization.pk:
            raise ValidationError({"team": "The team belongs to another organization."})
        return team
    if isinstance(team, int):
        found = Team.objects.filter(organization=organization, pk=team).first()
        if not found:
            raise ValidationError({"team": f"No team {team} in {organization}."})
        return found
    name = str(team).strip()
    return (Team.objects.filter(organization=organization, name=name).first()
            or create_team(organization, name, actor=actor))
