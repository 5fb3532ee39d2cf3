from django.apps import AppConfig


class GovernanceConfig(AppConfig):
    name = "governance"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from governance import receivers, schema  # noqa: F401 - schema registers the OpenAPI description of API keys

        receivers.connect()
