"""HTTP routes: the transfer API and the health check."""

from django.urls import include, path

from . import health

urlpatterns = [
    path("healthz", health.healthz),
    path("api/v1/", include("transfers.urls")),
]
