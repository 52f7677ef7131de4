"""Privilege refusals that are not 401/403, recorded as `denied` (docs/security.md).

A strict serializer answers 400 to fields it does not accept, and a route 405 to a method it
does not offer. Either can be an escalation attempt — creating a user in another organization,
moving a key to another owner — so, without changing the answer, this listener records a
400/405 whose refused input names an ownership or privilege field: `permission.privileged_field`.
An ordinary typo is not recorded. Connected in audit.signals.

The other such refusal, a 404 for an object the caller may not see (`permission.hidden_object`),
is recorded by the scoping gate that hid it (accounts.scoping.on_api_error).
"""

from __future__ import annotations

import logging
import re

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
    if status_code not in (400, 405) or request is None or context.current().denial_recorded:
        return
    if _view(request) is None:
        return
    try:
        fields = privileged_fields(request, status_code, message)
        if fields:
            record(actions.PRIVILEGED_FIELD_DENIED, status=actions.DENIED, request=request, resource=request.path[:255],
                   metadata={"method": request.method, "path": request.path[:500], "status": status_code,
                             "code": code, "fields": fields})
    except Exception:
        # The refusal itself stands; a failed audit write is logged, never turned into a 500.
        logger.exception("could not record a refused request as denied")
