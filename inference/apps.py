from django.apps import AppConfig


class InferenceConfig(AppConfig):
    name = "inference"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from config.observability import register_state_metrics
        from inference import checks, metrics, receivers  # noqa: F401 - checks registers the deploy checks

        receivers.connect()
        register_state_metrics(metrics.state_metrics)
