"""Console pages of the agents app: the chat (a shell; answers stream over /ws/chat/), and a
document with its parts, which a citation chip opens at the cited part (#chunk-N)."""

from django.conf import settings
from django.http import Http404
from django.shortcuts import render

from accounts.pages import may_open, page
from accounts.scoping import refuse_hidden, restrict
from agents.documents import readable_documents
from agents.listing import listed
from agents.models import Conversation, Document
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
        # The page refuses an oversized image before uploading it; the server checks again.
        "max_upload_bytes": settings.RELAY_MAX_UPLOAD_BYTES,
    }
    return render(request, "console/chat.html", context)


@page()
def document(request, pk: int):
    """The text of a document the user may read (the gate of the RAG agent: a document they may
    not see, or may not read through `use_rag_agent`, is a 404, recorded as a hidden object)."""
    found = readable_documents(request.user, None).filter(pk=pk).first()
    if found is None:
        refuse_hidden(Document, pk, resource=f"document:{pk}", request=request,
                      metadata={"method": request.method, "path": request.path[:500], "status": 404})
        raise Http404("No such document.")
    chunks = found.chunks.order_by("index").values("index", "text")
    parts = [{"number": chunk["index"] + 1, "anchor": f"chunk-{chunk['index']}", "text": chunk["text"]}
             for chunk in chunks]
    return render(request, "console/document.html", {"document": found, "parts": parts})
