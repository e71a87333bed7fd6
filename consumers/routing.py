"""WebSocket URL routes."""

from channels.generic.websocket import AsyncWebsocketConsumer
from django.urls import path, re_path

from .transfers import TransferConsumer


class UnknownPathConsumer(AsyncWebsocketConsumer):
    """Rejects handshakes to paths without a consumer; daphne responds with 403."""

    async def connect(self) -> None:
        await self.close()


websocket_urlpatterns = [
    path("ws/v1/transfers/", TransferConsumer.as_asgi()),
    # Without a catch-all, channels' URLRouter raises ValueError and daphne
    # responds with 500 and logs a traceback.
    re_path(r"", UnknownPathConsumer.as_asgi()),
]
