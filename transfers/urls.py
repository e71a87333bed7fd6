"""HTTP API routes under /api/v1/."""

from django.urls import path

from . import views

urlpatterns = [
    path("transfers/", views.create_transfer),
    path("transfers/<str:transfer_id>/", views.get_transfer),
    path("accounts/<str:account_id>/", views.get_account),
    path("time/", views.server_time),
]
