"""Settings of the benchmark server: the product's settings plus bench-only routes.

``serve`` loads ``ASGI_APPLICATION`` from settings, so pointing it and
``ROOT_URLCONF`` at the bench modules mounts the baselines next to the
product's own routes without touching production routing.
"""

from realtime.settings import *  # noqa: F403

ROOT_URLCONF = "bench.urls"
ASGI_APPLICATION = "bench.asgi.application"
