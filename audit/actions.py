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
API_KEY_UPDATED = "api_key.updated"  # name or limits edited in the admin
API_KEY_DELETED = "api_key.deleted"  # deleted in the admin (the API only revokes)

# People and tenants.
USER_CREATED = "user.created"
USER_UPDATED = "user.updated"
ROLE_CHANGED = "user.role_changed"
TEAM_CREATED = "team.created"
TEAM_UPDATED = "team.updated"
TEAM_DELETED = "team.deleted"
USER_DELETED = "user.deleted"  # deleted in the admin (the API deactivates)
PASSWORD_CHANGED = "user.password_changed"  # noqa: S105 (an action name)
ORGANIZATION_CREATED = "organization.created"
ORGANIZATION_UPDATED = "organization.updated"
ORGANIZATION_DELETED = "organization.deleted"
ROLE_CREATED = "role.created"  # a role is a Group (django.contrib.auth), edited in the admin
ROLE_UPDATED = "role.updated"
ROLE_DELETED = "role.deleted"

ADMIN_ACTION = "admin.action"  # a change made in the Django admin (from its LogEntry)

# Data and work; recorded by the apps that own them.
DATA_EXPORTED = "data.exported"
AGENT_RUN = "agent.run"
MODEL_FALLBACK = "model.fallback"  # a run moved to a fallback model before its first token (agents/fallbacks.py)
BUDGET_CREATED = "budget.created"
BUDGET_UPDATED = "budget.updated"
BUDGET_EXCEEDED = "budget.exceeded"
BUDGET_DELETED = "budget.deleted"
BUDGET_ALERT_DELETED = "budget_alert.deleted"
PRICE_CREATED = "model_price.created"
PRICE_UPDATED = "model_price.updated"
PRICE_DELETED = "model_price.deleted"
OPTIMIZER_SETTINGS_SAVED = "optimizer_settings.saved"
OPTIMIZER_SETTINGS_DELETED = "optimizer_settings.deleted"
DOCUMENT_UPLOADED = "document.uploaded"
DOCUMENT_DELETED = "document.deleted"
DOCUMENT_SHARED = "document.shared"
DOCUMENT_UPDATED = "document.updated"  # its title, owner or organization, edited in the admin
CONVERSATION_CREATED = "conversation.created"  # an empty one, through the API (a run's own is in agent.run)
CONVERSATION_DELETED = "conversation.deleted"
CONVERSATION_UPDATED = "conversation.updated"  # renamed or (un)pinned by its owner; the title stays out of the trail
FEEDBACK_RECORDED = "message.feedback_recorded"
MESSAGE_DELETED = "message.deleted"  # one message, in the admin (a conversation's go with conversation.deleted)
MODEL_ENDPOINT_CREATED = "model_endpoint.created"
MODEL_ENDPOINT_UPDATED = "model_endpoint.updated"
MODEL_ENDPOINT_DELETED = "model_endpoint.deleted"  # its deployments with it, listed in the event
MODEL_DEPLOYMENT_CREATED = "model_deployment.created"
MODEL_DEPLOYMENT_UPDATED = "model_deployment.updated"
MODEL_DEPLOYMENT_DELETED = "model_deployment.deleted"

# Training data (training/actions/): consent, exclusions, datasets and their builds. Downloads of a
# built version are DATA_EXPORTED, with resource "dataset_version:<id>".
TRAINING_CONSENT_CHANGED = "training.consent_changed"  # an organization admin turned it on or off
TRAINING_CONVERSATION_EXCLUDED = "training.conversation_excluded"  # by its owner (or an evaluation's run)
TRAINING_CONVERSATION_INCLUDED = "training.conversation_included"  # its owner lifted the exclusion
DATASET_CREATED = "dataset.created"
DATASET_DELETED = "dataset.deleted"  # its versions and their files with it
DATASET_BUILD_REQUESTED = "dataset.build_requested"
DATASET_BUILT = "dataset.built"  # status error when the build failed

# Evaluations (training/actions/evaluations.py): sets made and deleted; each evaluation's start (its
# evaluation key is an ordinary api_key.created) and its end, with what it finished.
EVALUATION_SET_CREATED = "evaluation_set.created"
EVALUATION_SET_DELETED = "evaluation_set.deleted"
EVALUATION_STARTED = "evaluation.started"
EVALUATION_FINISHED = "evaluation.finished"  # status error when it failed; stopped_by_budget in metadata

# Repairs of `manage.py reconcile --fix` (agents/reconcile.py); an interrupted answer it finds
# gets the usual AGENT_RUN event, with metadata interrupted_by "reconcile".
LEDGER_RECONCILED = "ledger.reconciled"  # a spent counter rebuilt from the usage records
RESERVATION_RELEASED = "ledger.reservation_released"  # a reservation past its deadline purged
AGENT_RUN_UNAUDITED = "agent.run_unaudited"  # a usage record found without its agent.run event

# A deployment's circuit breaker (agents/router), recorded by agents/actions/deployments.py; no
# organization: deployments are the platform's.
DEPLOYMENT_COOLDOWN_ENTERED = "deployment.cooldown_entered"
DEPLOYMENT_COOLDOWN_LEFT = "deployment.cooldown_left"

# The audit trail itself.
AUDIT_PRUNED = "audit.pruned"

SUCCESS, DENIED, ERROR = "success", "denied", "error"
STATUSES = (SUCCESS, DENIED, ERROR)
