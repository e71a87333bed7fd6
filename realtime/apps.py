from django.apps import AppConfig


class RealtimeConfig(AppConfig):
    name = "realtime"
    verbose_name = "Realtime transfer service"

    def ready(self) -> None:
        from . import checks  # noqa: F401  (registers the system checks)
        from .replay import connect_setting_signals

        connect_setting_signals()
