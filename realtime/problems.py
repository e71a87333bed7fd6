"""RFC 9457 problem details for every rejection the HTTP API returns."""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any

from django.http import HttpResponse

from .exceptions import Rejection

__all__ = ["PROBLEM_CONTENT_TYPE", "MethodNotAllowedProblemMiddleware", "problem_body", "problem_response"]

PROBLEM_CONTENT_TYPE = "application/problem+json"


def problem_body(rejection: Rejection) -> bytes:
    """Render a rejection as a problem object with the protocol's ``code`` member.

    ``type`` is ``about:blank`` and ``title`` the status phrase, as RFC 9457
    section 4.2.1 prescribes when ``code`` carries the problem's meaning.
    """
    document: dict[str, Any] = {
        "type": "about:blank",
        "title": HTTPStatus(rejection.status).phrase,
        "status": rejection.status,
        "detail": rejection.detail,
        "code": rejection.code,
        **rejection.extra,
    }
    return json.dumps(document, separators=(",", ":")).encode()


def problem_response(rejection: Rejection, **headers: str) -> HttpResponse:
    response = HttpResponse(problem_body(rejection), status=rejection.status, content_type=PROBLEM_CONTENT_TYPE)
    for name, value in headers.items():
        response[name.replace("_", "-")] = value
    return response


class MethodNotAllowedProblemMiddleware:
    """Turn Django's empty 405 responses into problem details that keep the Allow header.

    Works for sync and async views alike: Django adapts a sync middleware, and
    the conversion only touches the finished response.
    """

    def __init__(self, get_response: Any) -> None:
        self.get_response = get_response

    def __call__(self, request: Any) -> HttpResponse:
        response = self.get_response(request)
        if response.status_code != 405 or response.get("Content-Type", "").startswith(PROBLEM_CONTENT_TYPE):
            return response
        allowed = response.get("Allow", "")
        problem = problem_response(
            Rejection(f"method {request.method} is not allowed here; allowed: {allowed}", code="method_not_allowed", status=405)
        )
        problem["Allow"] = allowed
        return problem
