"""Console page of the training app: consent, datasets with their builds, evaluations (manage_training).

The page carries only what its forms need to start (choices, the consent); everything else is read
and changed by static/js/training*.js through /api/v1/training/, the same routes and checks as any client.
"""

from django.shortcuts import render

from accounts.models import Team, User
from accounts.pages import may_open, page
from accounts.permissions import ADMIN
from agents.api.openai_api import AGENT_PREFIX
from agents.providers.catalog import available_models
from agents.registry import all_agents, may_use
from training import services
from training.models import Dataset


def _choices(user) -> dict:
    organization = user.organization
    agents = [{"name": a.name, "title": a.title} for a in all_agents().values()]
    models = [m.name for m in available_models()]
    targets = models + [f"{AGENT_PREFIX}{a['name']}" for a in agents if may_use(user, None, a["name"])]
    return {
        "agents": agents,
        "models": models,
        "targets": targets,
        "statuses": [*services.COMPLETE, *services.FAILED],
        "feedback": [choice for choice, _ in Dataset.Feedback.choices],
        "users": [{"id": u["id"], "name": u["username"]} for u in
                  User.objects.filter(organization=organization, is_active=True).order_by("username")
                  .values("id", "username")[:500]],
        "teams": [{"id": t["id"], "name": t["name"]} for t in
                  Team.objects.filter(organization=organization).order_by("name").values("id", "name")[:100]],
    }


@page("manage_training")
def training(request):
    user = request.user
    if user.organization_id is None:
        return render(request, "console/training.html", {"has_organization": False})
    consent = services.consent_of(user.organization)
    context = {
        "has_organization": True,
        "consent": {"enabled": consent.enabled, "changed_by": consent.changed_by.username if consent.changed_by else None,
                    "changed_at": consent.changed_at.isoformat() if consent.pk else None},
        "is_admin": may_open(user, ADMIN),
        "can_export": may_open(user, "export_data"),
        "choices": _choices(user),
    }
    return render(request, "console/training.html", context)
