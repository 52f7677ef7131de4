"""Audit context for Channels consumers: one bound context per WebSocket connection.

Wrap the router with it inside AuthMiddlewareStack (so the session user is known):
`AuthMiddlewareStack(AuditScopeMiddleware(URLRouter(...)))`. A consumer that authenticates
a client by token calls `audit.context.set_actor(user, key)`, and may give each query its own
request id with `with audit.context.bind(request_id=audit.context.new_request_id()): ...`.
"""

from audit import context


class AuditScopeMiddleware:
    def __init__(self, inner):
        self.inner = inner

    async def __call__(self, scope, receive, send):
        if scope.get("type") != "websocket":
            return await self.inner(scope, receive, send)
        bound = context.from_scope(scope)
        scope = {**scope, "request_id": bound.request_id}
        with context.bind(bound):
            return await self.inner(scope, receive, send)
