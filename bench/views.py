"""Bench-only HTTP views: the bare baseline and the product without its ledger."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_POST

from realtime.exceptions import Rejection
from realtime.identity import ClientIdentity
from realtime.problems import problem_response
from transfers.views import check_transfer_command

__all__ = ["bare", "replay_checked"]

_BARE_BODY = b'{"status":"ok"}'
_CHECKED_BODY = b'{"status":"checked"}'


async def bare(request: HttpRequest) -> HttpResponse:
    """The baseline: an async view that reads nothing and returns a constant JSON body."""
    return HttpResponse(_BARE_BODY, content_type="application/json")


@require_POST
async def replay_checked(request: HttpRequest) -> HttpResponse:
    """Run every check of ``POST /api/v1/transfers/`` (headers, body, replay) and skip the ledger."""
    identity = request.scope["client_identity"]  # type: ignore[attr-defined]
    if not isinstance(identity, ClientIdentity):  # pragma: no cover - the middleware always sets it
        raise TypeError(f"expected a ClientIdentity in the scope, got {identity!r}")
    try:
        await check_transfer_command(request, identity)
    except Rejection as exc:
        return problem_response(exc)
    return HttpResponse(_CHECKED_BODY, status=201, content_type="application/json")
