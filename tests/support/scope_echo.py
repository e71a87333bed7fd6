"""An ASGI app that returns its connection's scope facts, served by ``serve`` in tests.

It shows what the project's daphne server puts into the scope, with no
identity or Django in between. Used through DJANGO_SETTINGS_MODULE=
tests.support.scope_echo, whose ASGI_APPLICATION names it.
"""

import json

from realtime.settings import *  # noqa: F403

ASGI_APPLICATION = "tests.support.scope_echo.application"


async def application(scope, receive, send):
    if scope["type"] != "http":
        return
    while True:
        message = await receive()
        if not message.get("more_body"):
            break
    document = {
        "server": scope.get("server"),
        "client": scope.get("client"),
        "scheme": scope.get("scheme"),
        "tls": (scope.get("extensions") or {}).get("tls"),
    }
    body = json.dumps(document).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})
