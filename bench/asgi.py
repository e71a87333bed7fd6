"""ASGI application of the benchmark server: the product's routing plus bench-only routes.

Every route, the baselines included, sits behind the same client-identity
middleware as production, so each request and socket pays the same mutual
TLS and identity lookup.
"""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.settings")

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.core.asgi import get_asgi_application  # noqa: E402
from django.urls import path  # noqa: E402

django_application = get_asgi_application()

from consumers.routing import websocket_urlpatterns  # noqa: E402
from realtime.middleware import ClientIdentityMiddleware  # noqa: E402

from .consumers import EchoConsumer, ReplayCheckedConsumer  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": ClientIdentityMiddleware(django_application),
        "websocket": ClientIdentityMiddleware(
            URLRouter(
                [
                    # Before the product's routes, which end with a catch-all.
                    path("bench/ws/echo/", EchoConsumer.as_asgi()),
                    path("bench/ws/replay/", ReplayCheckedConsumer.as_asgi()),
                    *websocket_urlpatterns,
                ]
            )
        ),
    }
)
