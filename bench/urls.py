"""HTTP routes of the benchmark server: the product's routes and two baselines."""

from django.urls import path

from realtime.urls import urlpatterns as product_urlpatterns

from . import views

urlpatterns = [
    *product_urlpatterns,
    path("bench/http/bare/", views.bare),
    path("bench/http/replay/", views.replay_checked),
]
