"""What gets recorded without its code calling record(): sign-ins, API refusals, admin changes and refusals.

Domain changes are recorded by the apps' actions (<app>/actions/), never from model signals here.

Connected in AuditConfig.ready().
"""

from django.contrib.admin.models import ADDITION, CHANGE, DELETION, LogEntry
from django.contrib.auth.signals import user_logged_in, user_logged_out, user_login_failed
from django.db.models.signals import post_save

from audit import actions, context
from audit.services import record

_ADMIN_VERBS = {ADDITION: "add", CHANGE: "change", DELETION: "delete"}


def on_login(sender, request, user, **kwargs):
    record(actions.LOGIN_SUCCEEDED, actor=user, request=request, resource=f"user:{user.pk}")


def on_logout(sender, request, user, **kwargs):
    if user is not None:
        record(actions.LOGOUT, actor=user, request=request, resource=f"user:{user.pk}")


def on_login_failed(sender, credentials, request=None, **kwargs):
    # Django has already masked the password in `credentials`; keep only the name tried.
    username = str(credentials.get("username", ""))[:150]
    record(actions.LOGIN_FAILED, status=actions.DENIED, request=request, resource=f"user:{username}",
           metadata={"username": username})


def on_api_error(request, status_code, code, message):
    """relay.api.errors listener: one `denied` event per 401/403 the API answers."""
    if request is None:
        return
    view = (getattr(request, "parser_context", None) or {}).get("view")
    match = getattr(request, "resolver_match", None)
    record_refusal(status_code, code, message, method=request.method, path=request.path,
                   resource=match.view_name if match else request.path, request=request,
                   auth_failure_action=getattr(view, "audit_auth_failure_action", actions.AUTH_FAILED))


def record_refusal(status_code: int, code: str, message: str, *, method: str, path: str, resource: str,
                   request=None, auth_failure_action: str = actions.AUTH_FAILED) -> None:
    """The one `denied` event of a 401/403, whichever transport refused (HTTP, WebSocket).

    Nothing is written when the refusal was already recorded in this context (a revoked key's
    use is recorded as such by the key check), so one refusal never yields two events.
    """
    if status_code not in (401, 403) or context.current().denial_recorded:
        return
    action = auth_failure_action if status_code == 401 else actions.PERMISSION_DENIED
    record(action, status=actions.DENIED, request=request, resource=resource[:255],
           metadata={"method": method, "path": path[:500], "status": status_code, "code": code,
                     "message": message[:500]})


def _admin_resource(entry) -> str:
    model = entry.content_type.model if entry.content_type_id else "object"
    return f"{entry.content_type.app_label}.{model}:{entry.object_id}" if entry.content_type_id else model


def on_admin_log(sender, instance, created, **kwargs):
    if created:
        record_admin_entry(instance)


def record_admin_entry(entry, *, count: int = 1, object_ids=None) -> None:
    metadata = {"operation": _ADMIN_VERBS.get(entry.action_flag, str(entry.action_flag)),
                "object_repr": entry.object_repr, "change_message": entry.get_change_message()}
    if object_ids is not None:
        metadata.update(count=count, object_ids=[str(pk) for pk in object_ids][:1000])
    record(actions.ADMIN_ACTION, actor=entry.user, resource=_admin_resource(entry), metadata=metadata)


def _audited_log_actions(original):
    """Bulk admin actions (delete_selected) write LogEntry rows with bulk_create, which sends
    no post_save; record one event naming every object instead."""

    def log_actions(self, user_id, queryset, action_flag, change_message="", *, single_object=False):
        result = original(self, user_id, queryset, action_flag, change_message, single_object=single_object)
        entries = result if isinstance(result, list) else [result]
        if len(entries) > 1:
            record_admin_entry(entries[0], count=len(entries), object_ids=[e.object_id for e in entries])
        return result

    log_actions.audited = True
    return log_actions


def connect() -> None:
    import rest_framework.views  # noqa: F401  (first: relay.api.errors imported alone is a circular import)

    from relay.api.errors import add_error_listener

    user_logged_in.connect(on_login, dispatch_uid="audit.login")
    user_logged_out.connect(on_logout, dispatch_uid="audit.logout")
    user_login_failed.connect(on_login_failed, dispatch_uid="audit.login_failed")
    post_save.connect(on_admin_log, sender=LogEntry, dispatch_uid="audit.admin_log")
    add_error_listener(on_api_error)
    from audit import refusals

    add_error_listener(refusals.on_api_error)
    manager = type(LogEntry.objects)
    if not getattr(manager.log_actions, "audited", False):
        manager.log_actions = _audited_log_actions(manager.log_actions)
