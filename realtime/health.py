"""Health check reporting database and replay-store reachability."""

from __future__ import annotations

import logging

from asgiref.sync import sync_to_async
from django.db import DatabaseError, connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_GET

from .exceptions import ReplayStoreUnavailable
from .replay import get_replay_store

logger = logging.getLogger(__name__)


def _database_answers() -> bool:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return True
    except DatabaseError as exc:
        logger.warning("health check: database unavailable: %s", exc)
        connection.close()
        return False


@require_GET
async def healthz(request: HttpRequest) -> JsonResponse:
    """Return 200 when the database and the replay store respond, 503 otherwise."""
    database_ok = await sync_to_async(_database_answers, thread_sensitive=False)()
    try:
        await get_replay_store().ping()
        store_ok = True
    except ReplayStoreUnavailable as exc:
        logger.warning("health check: replay store unavailable: %s", exc.__cause__ or exc)
        store_ok = False

    healthy = database_ok and store_ok
    document = {
        "status": "ok" if healthy else "unavailable",
        "database": "ok" if database_ok else "unavailable",
        "replay_store": "ok" if store_ok else "unavailable",
    }
    response = JsonResponse(document, status=200 if healthy else 503)
    if not healthy:
        response["Retry-After"] = "1"
    return response
