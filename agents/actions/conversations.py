"""The writes of conversations outside a run: creating an empty one, renaming or pinning one, deleting one.

A run creates its own conversation and messages (agents.runner); its agent.run event covers them.
"""

from __future__ import annotations

from django.db import transaction

from accounts.models import User
from agents.models import Conversation, Message
from audit import actions
from audit.services import record


def _resource(conversation: Conversation) -> str:
    return f"conversation:{conversation.pk}"


@transaction.atomic
def create_conversation(user: User, *, agent: str, title: str = "") -> Conversation:
    """The caller has checked that `user` may use `agent` (agents.registry.may_use)."""
    conversation = Conversation.objects.create(user=user, organization_id=user.organization_id, agent=agent,
                                               title=title)
    # The title is the user's own words: it stays out of the trail.
    record(actions.CONVERSATION_CREATED, actor=user, organization=conversation.organization_id,
           resource=_resource(conversation), metadata={"agent": agent})
    return conversation


@transaction.atomic
def update_conversation(conversation: Conversation, *, actor: User, title: str | None = None,
                        pinned: bool | None = None) -> Conversation:
    """Rename and/or (un)pin; the caller has passed the scoping gate. Its place among recent ones stays."""
    changes = {name: value for name, value in (("title", title), ("pinned", pinned)) if value is not None}
    if not changes:
        raise ValueError("Nothing to change.")
    # update(), not save(): renaming is not activity, so updated_at (the sidebar's order) stays.
    Conversation.objects.filter(pk=conversation.pk).update(**changes)
    for name, value in changes.items():
        setattr(conversation, name, value)
    metadata = {"fields": sorted(changes), **({"pinned": pinned} if pinned is not None else {})}
    record(actions.CONVERSATION_UPDATED, actor=actor, organization=conversation.organization_id,
           resource=_resource(conversation), metadata=metadata)
    return conversation


@transaction.atomic
def delete_conversation(conversation: Conversation, *, actor: User | None = None) -> None:
    """Deletes its messages too (a privacy request, or the owner clearing their history)."""
    resource, organization = _resource(conversation), conversation.organization_id
    metadata = {"agent": conversation.agent, "user": conversation.user_id,
                "messages": conversation.messages.count()}
    conversation.delete()
    record(actions.CONVERSATION_DELETED, actor=actor, organization=organization, resource=resource,
           metadata=metadata)


@transaction.atomic
def delete_message(message: Message, *, actor: User | None = None) -> None:
    """One message, in the admin; its conversation stays."""
    resource = f"message:{message.pk}"
    metadata = {"conversation": str(message.conversation_id), "role": message.role, "request_id": message.request_id}
    organization = Conversation.objects.filter(pk=message.conversation_id).values_list(
        "organization_id", flat=True).first()
    message.delete()
    record(actions.MESSAGE_DELETED, actor=actor, organization=organization, resource=resource, metadata=metadata)
