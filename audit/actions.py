"""Action names of audit events: use these constants so every app writes the same names.

Names are `<subject>.<verb>`; exports and filters match on them, so never rename one that has
been recorded (add a new name instead).
"""

# Sign-in and credentials.
LOGIN_SUCCEEDED = "auth.login"
LOGIN_FAILED = "auth.login_failed"
LOGOUT = "auth.logout"
AUTH_FAILED = "auth.failed"  # any 401: missing, malformed, expired or unknown credentials
TOKEN_ISSUED = "auth.token_issued"  # noqa: S105 (an action name)
TOKEN_REFRESHED = "auth.token_refreshed"  # noqa: S105 (an action name)
TOKEN_REFRESH_FAILED = "auth.token_refresh_failed"  # noqa: S105 (an action name)
PERMISSION_DENIED = "permission.denied"  # any 403
# Refusals answered 404/400/405 that were privilege refusals (audit/refusals.py).
HIDDEN_OBJECT_DENIED = "permission.hidden_object"  # someone else's object, answered 404
PRIVILEGED_FIELD_DENIED = "permission.privileged_field"  # input naming owner/role/organization, refused

API_KEY_CREATED = "api_key.created"
API_KEY_REVOKED = "api_key.revoked"
API_KEY_ROTATED = "api_key.rotated"
API_KEY_USED_AFTER_REVOKE = "api_key.used_after_revoke"

# People and tenants.
USER_CREATED = "user.created"
USER_UPDATED = "user.updated"
ROLE_CHANGED = "user.role_changed"
TEAM_CREATED = "team.created"
TEAM_UPDATED = "team.updated"

ADMIN_ACTION = "admin.action"  # a change made in the Django admin (from its LogEntry)

# Data and work; recorded by the apps that own them.
DATA_EXPORTED = "data.exported"
AGENT_RUN = "agent.run"
BUDGET_CREATED = "budget.created"
BUDGET_UPDATED = "budget.updated"
BUDGET_EXCEEDED = "budget.exceeded"
DOCUMENT_UPLOADED = "document.uploaded"
DOCUMENT_DELETED = "document.deleted"
DOCUMENT_SHARED = "document.shared"

# Repairs of `manage.py reconcile --fix` (agents/reconcile.py); an interrupted answer it finds
# gets the usual AGENT_RUN event, with metadata interrupted_by "reconcile".
LEDGER_RECONCILED = "ledger.reconciled"  # a spent counter rebuilt from the usage records
RESERVATION_RELEASED = "ledger.reservation_released"  # a reservation past its deadline purged
AGENT_RUN_UNAUDITED = "agent.run_unaudited"  # a usage record found without its agent.run event

# The audit trail itself.
AUDIT_PRUNED = "audit.pruned"

SUCCESS, DENIED, ERROR = "success", "denied", "error"
STATUSES = (SUCCESS, DENIED, ERROR)
