from django.apps import AppConfig


class GovernanceConfig(AppConfig):
    name = "governance"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from config.observability import register_state_metrics
        from governance import metrics, receivers, schema  # noqa: F401 - schema registers the OpenAPI description of API keys

        receivers.connect()
        register_state_metrics(metrics.state_metrics)
