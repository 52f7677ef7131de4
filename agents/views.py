"""Console page of the agents app: the chat (the page is a shell; answers stream over /ws/chat/)."""

from django.shortcuts import render

from accounts.pages import may_open, page
from accounts.scoping import restrict
from agents.listing import listed
from agents.models import Conversation
from agents.registry import all_agents, may_use

RECENT_CONVERSATIONS = 50


@page()
def chat(request):
    user = request.user
    agents = [{"name": a.name, "title": a.title, "description": a.description, "tools": [t.name for t in a.tools]}
              for a in all_agents().values() if may_use(user, None, a.name)]
    conversations = [
        {"id": str(c["id"]), "title": c["title"] or "Untitled conversation", "agent": c["agent"],
         "pinned": c["pinned"], "updated_at": c["updated_at"].isoformat()}
        for c in listed(restrict(Conversation, user)).order_by("-pinned", "-updated_at")
        .values("id", "title", "agent", "pinned", "updated_at")[:RECENT_CONVERSATIONS]
    ]
    context = {
        "agents": agents,
        "conversations": conversations,
        "can_upload": may_open(user, "upload_documents"),
        "can_vision": may_use(user, None, "vision"),
    }
    return render(request, "console/chat.html", context)
