"""WebSocket URL routes."""

from django.urls import path

from .transfers import TransferConsumer

websocket_urlpatterns = [
    path("ws/v1/transfers/", TransferConsumer.as_asgi()),
]
