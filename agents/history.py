"""The earlier turns a new turn is asked with: the branch of the conversation's tree it joins.

`req` is an agents.runner.RunRequest; finding the history also finds where the new turn hangs
(`req.follows`, and for a regenerated answer `req.answers` and `req.query`).
"""

from __future__ import annotations

import uuid

from rest_framework import exceptions

HISTORY_MESSAGES = 20
TREE_ROWS = 1000  # the recent messages a branch's history is walked through


def _id(value) -> str | None:
    return str(value) if value else None


def load_history(req) -> list[dict]:
    """The earlier turns of the branch the new turn joins; sets where it hangs (req.follows, req.answers)."""
    from accounts.scoping import refuse_hidden, restrict
    from agents.models import Conversation

    if not req.conversation_id:
        if req.regenerate or req.edit:
            raise exceptions.ValidationError({"conversation_id": ["Name the conversation of the message."]})
        return list(req.history or [])
    conversation = restrict(Conversation, req.user).filter(pk=req.conversation_id).first()
    if conversation is None:
        # No Scoped view answers this 404 (every transport reaches it through the runner), so the
        # gate's record of a probe for someone else's conversation is made here; none if it does not exist.
        refuse_hidden(Conversation, req.conversation_id, resource=f"conversation:{req.conversation_id}",
                      metadata={"field": "conversation_id", "status": 404, "code": "not_found"})
        raise exceptions.NotFound("No such conversation.")
    return branch_history(req, conversation)


def branch_history(req, conversation) -> list[dict]:
    from agents.models import Message

    # The tree's links only (no content) for the walk; then the contents of the turns it picked.
    links = {str(m["id"]): m for m in conversation.messages.order_by("-created_at")
             .values("id", "parent_id", "role")[:TREE_ROWS]}
    if req.regenerate or req.edit:
        role = Message.Role.ASSISTANT if req.regenerate else Message.Role.USER
        target = conversation.messages.filter(pk=req.regenerate or req.edit, role=role).values("parent_id").first()
        if target is None:
            raise exceptions.NotFound(f"No such {'answer' if req.regenerate else 'question'} in this conversation.")
        start = _id(target["parent_id"])
        if req.regenerate:
            question = conversation.messages.filter(pk=start, role=Message.Role.USER).values(
                "parent_id", "content").first() if start else None
            if question is None:
                raise exceptions.ValidationError({"regenerate": ["This answer has no question to ask again."]})
            req.answers, req.query = start, question["content"]
            start = _id(question["parent_id"])
        req.follows = start
    elif req.parent:  # the branch the client shows
        if req.parent not in links and not conversation.messages.filter(pk=req.parent).exists():
            raise exceptions.NotFound("No such message in this conversation.")
        req.follows = req.parent
    else:  # a new turn continues from the latest message
        req.follows = next(iter(links), None)
    chain, cursor = [], req.follows
    while cursor in links and len(chain) < HISTORY_MESSAGES + 10:  # a few spare for empty answers
        chain.append(cursor)
        cursor = _id(links[cursor]["parent_id"])
    contents = dict(conversation.messages.filter(pk__in=chain).values_list("id", "content"))
    turns = [{"role": links[pk]["role"], "content": contents[uuid.UUID(pk)]} for pk in chain
             if contents.get(uuid.UUID(pk))]
    return turns[:HISTORY_MESSAGES][::-1]
