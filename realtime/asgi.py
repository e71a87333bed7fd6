"""ASGI entry point: HTTP API and WebSocket consumers behind client identity."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "realtime.settings")

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.core.asgi import get_asgi_application  # noqa: E402

# Django must be set up before the consumers import models.
django_application = get_asgi_application()

from consumers.routing import websocket_urlpatterns  # noqa: E402
from realtime.middleware import ClientIdentityMiddleware  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": ClientIdentityMiddleware(django_application),
        "websocket": ClientIdentityMiddleware(URLRouter(websocket_urlpatterns)),
    }
)
