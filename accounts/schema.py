"""OpenAPI (settings: DEFAULT_SCHEMA_CLASS): every operation says who may call it, from the view's own declaration."""

from drf_spectacular.openapi import AutoSchema

from accounts.permissions import ADMIN, AUTHENTICATED, PLATFORM_STAFF, requirement_for


def describe_requirement(requirement) -> str:
    if requirement is None:
        return "No authentication required."
    if requirement == AUTHENTICATED:
        return "Requires: any authenticated caller (API key, JWT or session)."
    if requirement == ADMIN:
        return "Requires: an admin of the caller's organization (API keys: with every scope)."
    if requirement == PLATFORM_STAFF:
        return "Requires: platform staff, not an organization role (API keys: with every scope)."
    return f"Requires: permission `{requirement}` (API keys: in their scopes too)."


class RelayAutoSchema(AutoSchema):
    def get_description(self):
        base = super().get_description() or ""
        requirement = describe_requirement(requirement_for(self.view, self.method))
        return f"{base}\n\n**{requirement}**".strip()
