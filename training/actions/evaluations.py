"""Evaluation sets (made, deleted) and evaluations (started, run by a Celery task, finished), audited.

An evaluation's runs go through Relay's own runner (agents.runner: new_request, prepare, collect)
with an API key of the person who starts it, created when it starts through accounts' key action
with that person's own permissions, under the key they asked through if any (never more than
either), so the key's, its ancestors', the user's and the organization's budgets apply. Each run gets its own conversation, excluded from training (reason evaluation)
before its first message exists; that exclusion also hides it from its owner's conversation
lists. A budget that refuses or stops a run ends the evaluation cleanly as stopped_by_budget:
its results so far stay, nothing more is reserved. Before each run the key and its owner are read
again, as every transport admits each query (accounts.admission): a key revoked or expired (or one
above it), whose address ranges no longer admit the address the evaluation was started from, an
owner deactivated, moved or without manage_training ends the evaluation as failed.
"""

from __future__ import annotations

import logging

from asgiref.sync import async_to_sync
from django.db import transaction
from django.utils import timezone
from rest_framework.exceptions import APIException

from accounts import key_tree
from accounts.actions.keys import create_api_key, revoke_api_key
from accounts.models import APIKey, Organization, User
from accounts.permissions import holds
from accounts.services import addresses_admit, key_permissions
from agents import runner
from agents.actions.conversations import create_conversation, delete_conversation
from agents.models import Conversation, Message
from audit import actions
from audit.services import record
from billing.api.errors import BudgetExceededError
from training import evaluations
from training.actions.consent import exclude_conversation
from training.evaluation_scoring import agreement
from training.models import ConversationExclusion, DatasetVersion
from training.models_evaluation import Evaluation, EvaluationItem, EvaluationResult, EvaluationSet

logger = logging.getLogger(__name__)
BUDGET = "budget"
MANAGE = "manage_training"  # what starting an evaluation needs (training.api), and so each of its runs


# --- sets -------------------------------------------------------------------------------------


@transaction.atomic
def create_set(organization: Organization, *, actor: User | None, name: str, items: list[evaluations.ItemData],
               version: DatasetVersion | None = None) -> EvaluationSet:
    """items: parsed by training.evaluations (parse_upload or version_items)."""
    source = EvaluationSet.Source.DATASET if version is not None else EvaluationSet.Source.UPLOAD
    created = EvaluationSet.objects.create(
        organization=organization, name=name, source=source, dataset_version=version, created_by=actor,
        items_count=len(items), references_count=sum(1 for item in items if item.reference))
    EvaluationItem.objects.bulk_create(
        [EvaluationItem(evaluation_set=created, position=item.position, prompt=item.prompt, reference=item.reference or "",
                        agent=item.agent, external_id=item.external_id) for item in items], batch_size=1000)
    record(actions.EVALUATION_SET_CREATED, actor=actor, organization=organization.pk,
           resource=f"evaluation_set:{created.pk}",
           metadata={"name": name, "source": source, "items": created.items_count,
                     "dataset_version": version.pk if version else None})
    return created


@transaction.atomic
def delete_set(evaluation_set: EvaluationSet, *, actor: User | None) -> None:
    """Its evaluations and their results go with it; the runs they made stay (billed, audited)."""
    resource, organization = f"evaluation_set:{evaluation_set.pk}", evaluation_set.organization_id
    metadata = {"name": evaluation_set.name, "evaluations": evaluation_set.evaluations.count()}
    evaluation_set.delete()
    record(actions.EVALUATION_SET_DELETED, actor=actor, organization=organization, resource=resource,
           metadata=metadata)


# --- evaluations ------------------------------------------------------------------------------


@transaction.atomic
def start_evaluation(evaluation_set: EvaluationSet, *, actor: User, targets: list[str], agent: str = "general",
                     max_tokens: int = 512, enqueue: bool = True, via_key: APIKey | None = None,
                     client_ip: str | None = None) -> Evaluation:
    """A queued evaluation on a new key of actor's; the Celery task runs it once this commits.

    The caller has checked the targets (training.evaluations.target_problem) and that actor may
    use agent. via_key: the API key the request came through, which the evaluation key stays within;
    client_ip: the address of that request, which the key's address ranges must admit before each run.
    """
    evaluation = Evaluation.objects.create(
        organization_id=evaluation_set.organization_id, evaluation_set=evaluation_set, targets=list(targets),
        agent=agent, max_tokens=max_tokens, started_by=actor, total=evaluation_set.items_count * len(targets),
        client_ip=client_ip)
    _issue_key(evaluation, via_key)
    record(actions.EVALUATION_STARTED, actor=actor, organization=evaluation.organization_id,
           resource=f"evaluation:{evaluation.pk}",
           metadata={"evaluation_set": evaluation_set.pk, "targets": evaluation.targets, "agent": agent,
                     "runs": evaluation.total})
    if enqueue:
        from training.tasks import run_evaluation_task

        transaction.on_commit(lambda: run_evaluation_task.delay(evaluation.pk))
    return evaluation


def _issue_key(evaluation: Evaluation, via_key: APIKey | None) -> None:
    """The evaluation's own key of its starter (api_key.created), never more than they hold: their
    permissions (create_api_key's default), and when they asked through a key, minted under it, so
    that key's scopes, agents, models and key budgets bind every run (the runs happen later, in a worker)."""
    grantable = key_permissions(via_key) if via_key is not None else None
    evaluation.api_key = create_api_key(evaluation.started_by, f"Evaluation {evaluation.pk}", grantable=grantable,
                                        parent=via_key).key
    evaluation.save(update_fields=["api_key"])


@transaction.atomic
def _open_conversation(user: User, agent: str, evaluation_set: EvaluationSet) -> Conversation:
    """The run's conversation, out of training and out of its owner's lists before any message is in it.

    A set made from a version asks copies of training data: its runs are marked so that no build,
    include_evaluation or not, takes them back (training.services.selected_answers)."""
    reason = (ConversationExclusion.Reason.EVALUATION_COPY if evaluation_set.source == EvaluationSet.Source.DATASET
              else ConversationExclusion.Reason.EVALUATION)
    conversation = create_conversation(user, agent=agent, title="Evaluation run")
    exclude_conversation(conversation, actor=user, reason=reason)
    return conversation


def _refusal(evaluation: Evaluation) -> str | None:
    """Why the evaluation may not make its next run, from the key and owner as they are now; None: it may.

    The checks of accounts.services.authenticate_key and accounts.admission.admit, which need the
    secret or a request: the worker holds neither, and the rows it loaded at the start go stale.
    No client asks here: the address ranges are checked against the address that started it. On
    None, the evaluation runs with the fresh rows.
    """
    key = APIKey.objects.select_related("owner", key_tree.CHAIN).filter(pk=evaluation.api_key_id).first()
    now = timezone.now()
    if key is None:
        return "its key was deleted"
    if key.revoked_at is not None:
        return "its key was revoked"
    if any(link.revoked_at is not None for link in key_tree.ancestors(key)):
        return "its key was revoked with the key it was started through"
    if any(link.expires_at is not None and link.expires_at <= now for link in key_tree.chain(key)):
        return "its key expired"
    if not addresses_admit(key, evaluation.client_ip):
        return "its key may no longer be used from the address it was started from"
    owner = key.owner
    if not owner.is_active:
        return "the person who started it was deactivated"
    if owner.organization_id != evaluation.organization_id:
        return "the person who started it left the organization"
    if not holds(owner, key, MANAGE):
        return "the person who started it no longer holds manage_training"
    evaluation.api_key, evaluation.started_by = key, owner
    return None


async def _ask(request: runner.RunRequest) -> tuple[str, dict | str | None]:
    try:
        run = await runner.prepare(request)
    except BudgetExceededError as refused:
        return BUDGET, str(refused.detail)
    except APIException as refused:  # busy, rate limited, a model gone since the start: this run only
        return "refused", str(refused.detail)
    return "ran", await runner.collect(run)


def _one_run(evaluation: Evaluation, item: EvaluationItem, target: str) -> str | None:
    """Run item on target and store its result; BUDGET when a budget refused or stopped it."""
    user = evaluation.started_by  # as _refusal read it just before
    agent, model = evaluations.run_of(target, evaluation.agent, item.agent)
    conversation = _open_conversation(user, agent, evaluation.evaluation_set)
    request = runner.new_request(user, evaluation.api_key, {
        "agent_type": agent, "query": item.prompt, "model": model, "max_tokens": evaluation.max_tokens,
        "cache": False,  # the model is measured, not the response cache
        "conversation_id": str(conversation.pk)})
    outcome, answer = async_to_sync(_ask)(request)
    if outcome != "ran":
        delete_conversation(conversation, actor=user)  # nothing was asked in it
        if outcome == BUDGET:
            return answer
        EvaluationResult.objects.create(evaluation=evaluation, item=item, target=target, status="refused",
                                        answer=(answer or "")[:2000])
        return None
    message = Message.objects.filter(pk=answer["message_id"]).first()
    score, kind = agreement(answer["answer"], item.reference) if answer["status"] == "complete" else (None, "")
    if item.reference and answer["status"] != "complete":
        score, kind = agreement("", item.reference)  # an answer that did not finish does not agree
    EvaluationResult.objects.create(
        evaluation=evaluation, item=item, target=target, status=answer["status"], answer=answer["answer"],
        conversation_id=answer["conversation_id"], message_id=answer["message_id"],
        quality_score=message.quality_score if message and answer["status"] == "complete" else None,
        latency_ms=message.latency_ms if message else None, cost=message.cost if message else 0,
        agreement=score, agreement_kind=kind)
    if answer["status"] == "budget_stop":
        return next((e["message"] for e in answer["errors"] if e["code"] == "budget_exceeded"),
                    "The budget is used up.")
    return None


def _runs(evaluation: Evaluation):
    """(item, target) in item-major order: when a budget stops it, every target has answered the same
    items (give or take one)."""
    for item in evaluation.evaluation_set.items.order_by("position").iterator(chunk_size=200):
        for target in evaluation.targets:
            yield item, target


def run_evaluation(evaluation_id: int, *, on_progress=None) -> Evaluation:
    """Run a queued evaluation (the task's body and `manage.py run_evaluation`'s), item by item across targets."""
    evaluation = Evaluation.objects.select_related("evaluation_set", "api_key", "started_by").get(pk=evaluation_id)
    if evaluation.state != Evaluation.State.QUEUED:
        return evaluation
    Evaluation.objects.filter(pk=evaluation.pk).update(state=Evaluation.State.RUNNING, started_at=timezone.now())
    evaluation.state = Evaluation.State.RUNNING
    stopped = refused = None
    try:
        for item, target in _runs(evaluation):
            refused = _refusal(evaluation)
            if refused is not None:
                break
            stopped = _one_run(evaluation, item, target)
            evaluation.processed = evaluation.results.count()
            Evaluation.objects.filter(pk=evaluation.pk).update(processed=evaluation.processed)
            if on_progress:
                on_progress(evaluation)
            if stopped is not None:
                break
    except Exception as error:
        logger.exception("evaluation %s failed", evaluation.pk)
        return _finish(evaluation, Evaluation.State.FAILED, f"The evaluation failed ({type(error).__name__}); "
                       "see the server log.")
    if refused is not None:
        return _finish(evaluation, Evaluation.State.FAILED, f"Stopped after {evaluation.processed} of "
                       f"{evaluation.total} runs: {refused}.", refused=refused)
    if stopped is not None:
        return _finish(evaluation, Evaluation.State.STOPPED_BY_BUDGET,
                       f"Stopped by a budget after {evaluation.processed} of {evaluation.total} runs: {stopped}")
    return _finish(evaluation, Evaluation.State.DONE, "")


@transaction.atomic
def _finish(evaluation: Evaluation, state: str, message: str, *, refused: str | None = None) -> Evaluation:
    """refused: why its key or starter may no longer run it (_refusal), recorded with the ending."""
    evaluation.state, evaluation.message, evaluation.finished_at = state, message[:500], timezone.now()
    evaluation.processed = evaluation.results.count()
    evaluation.save(update_fields=["state", "message", "finished_at", "processed"])
    key = APIKey.objects.filter(pk=evaluation.api_key_id).first()  # as it is now: it may be revoked already
    if key is not None and key.revoked_at is None:
        revoke_api_key(key, actor=evaluation.started_by)  # its work is done: nothing else uses it
    metadata = {"state": state, "finished": evaluation.processed, "total": evaluation.total,
                "stopped_by_budget": state == Evaluation.State.STOPPED_BY_BUDGET}
    if refused is not None:
        metadata["refused"] = refused
    record(actions.EVALUATION_FINISHED, status=actions.ERROR if state == Evaluation.State.FAILED else actions.SUCCESS,
           actor=evaluation.started_by, organization=evaluation.organization_id,
           resource=f"evaluation:{evaluation.pk}", metadata=metadata)
    return evaluation
