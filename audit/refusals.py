"""Privilege refusals that are not 401/403, recorded as `denied` (docs/security.md).

Relay answers 404 for objects a caller may not see (so their existence does not leak), and a
strict serializer answers 400 to fields it does not accept. Both can be an escalation attempt —
reading another user's conversation, creating a user in another organization, moving a key to
another owner — so, without changing the answer, this listener records them:

- 404 on an object route when the object exists (someone else's): `permission.hidden_object`;
- 400/405 whose refused input names an ownership or privilege field: `permission.privileged_field`.

A genuinely missing object or an ordinary typo is not recorded. Connected in audit.signals.
"""

from __future__ import annotations

import logging
import re

from django.core.exceptions import ValidationError

from audit import actions, context
from audit.services import record

logger = logging.getLogger(__name__)

# Fields that move rights or ownership; refusing one of them is refusing a privilege.
PRIVILEGED_FIELDS = frozenset({
    "owner", "user", "user_id", "organization", "organization_id", "role", "team", "team_id", "groups",
    "user_permissions", "is_superuser", "is_staff", "permissions", "api_key", "prefix", "secret_hash",
})
_REFUSED_FIELD = re.compile(r"(?:^|[ ;.])([A-Za-z_]+): Unknown or read-only field\.")


def _view(request):
    return (getattr(request, "parser_context", None) or {}).get("view")


def hidden_object(view) -> str | None:
    """"model:pk" when the object the view looked up exists but was not in the caller's scope."""
    lookup = getattr(view, "audit_hidden_lookup", None)  # (Model, url kwarg) for plain APIViews
    if lookup is not None:
        model, kwarg = lookup
    else:
        queryset = getattr(view, "queryset", None)
        if queryset is None:
            return None
        model = queryset.model
        kwarg = getattr(view, "lookup_url_kwarg", None) or getattr(view, "lookup_field", "pk")
    value = (getattr(view, "kwargs", None) or {}).get(kwarg)
    if value is None:
        return None
    try:
        exists = model._default_manager.filter(pk=value).exists()
    except (ValueError, TypeError, LookupError, ValidationError):  # a malformed id: nothing to hide
        return None
    return f"{model._meta.model_name}:{value}" if exists else None


def privileged_fields(request, status_code: int, message: str) -> list[str]:
    if status_code == 400:
        named = _REFUSED_FIELD.findall(message)
    else:  # 405: a method the route does not offer, e.g. PATCH on a key to move it
        try:
            data = request.data
        except Exception:  # noqa: BLE001 - an unparseable body names no field
            return []
        named = list(data) if isinstance(data, dict) else []
    return sorted(set(named) & PRIVILEGED_FIELDS)


def on_api_error(request, status_code, code, message):
    if status_code not in (400, 404, 405) or request is None or context.current().denial_recorded:
        return
    view = _view(request)
    if view is None:
        return
    try:
        if status_code == 404:
            resource = hidden_object(view)
            action, metadata = actions.HIDDEN_OBJECT_DENIED, {}
        else:
            fields = privileged_fields(request, status_code, message)
            resource = request.path[:255] if fields else None
            action, metadata = actions.PRIVILEGED_FIELD_DENIED, {"fields": fields}
        if resource:
            record(action, status=actions.DENIED, request=request, resource=resource,
                   metadata={"method": request.method, "path": request.path[:500], "status": status_code,
                             "code": code, **metadata})
    except Exception:
        # The refusal itself stands; a failed audit write is logged, never turned into a 500.
        logger.exception("could not record a refused request as denied")
