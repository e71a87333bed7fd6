"""HTTP routes: the transfer API and the health check."""

from django.http import HttpRequest, HttpResponse
from django.urls import include, path

from . import health
from .exceptions import Rejection
from .problems import problem_response

urlpatterns = [
    path("healthz", health.healthz),
    path("api/v1/", include("transfers.urls")),
]


def not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    return problem_response(Rejection("no such resource", code="not_found", status=404))


def server_error(request: HttpRequest) -> HttpResponse:
    # Django has logged the exception; the client learns nothing about it.
    return problem_response(Rejection("unexpected server error", code="internal_error", status=500))


handler404 = not_found
handler500 = server_error
