"""WebSocket routes (the streaming issue adds /ws/chat/)."""

websocket_urlpatterns = []
