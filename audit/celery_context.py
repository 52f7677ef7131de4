"""Carry the audit context from the code that queues a Celery task into the worker that runs it.

The publishing side writes the context into the message headers; the worker binds it for the
task's run and unbinds it afterwards. Eager tasks (the embedded mode) run in the caller's own
context and carry no header, so nothing is bound for them.
"""

from celery.signals import before_task_publish, task_postrun, task_prerun

from audit import context

HEADER = "relay_audit"
_tokens = {}


def inject(headers=None, **kwargs):
    if headers is not None and context.is_bound():
        headers[HEADER] = context.current().to_headers()


def _carried(task) -> dict | None:
    request = getattr(task, "request", None)
    carried = getattr(request, HEADER, None)
    if carried is None:  # some protocol/transport combinations nest custom headers
        carried = (getattr(request, "headers", None) or {}).get(HEADER)
    return carried if isinstance(carried, dict) else None


def bind_task(task_id=None, task=None, **kwargs):
    carried = _carried(task)
    if carried is not None and task_id is not None:
        _tokens[task_id] = context.activate(context.AuditContext.from_headers(carried))


def unbind_task(task_id=None, **kwargs):
    token = _tokens.pop(task_id, None)
    if token is not None:
        try:
            context.deactivate(token)
        except ValueError:  # bound in another context (a pool that hops threads): nothing to undo here
            pass


def connect() -> None:
    before_task_publish.connect(inject, dispatch_uid="audit.celery.inject", weak=False)
    task_prerun.connect(bind_task, dispatch_uid="audit.celery.bind", weak=False)
    task_postrun.connect(unbind_task, dispatch_uid="audit.celery.unbind", weak=False)
