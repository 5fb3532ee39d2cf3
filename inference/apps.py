from django.apps import AppConfig


class InferenceConfig(AppConfig):
    name = "inference"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from inference import checks, receivers  # noqa: F401 - checks registers the deploy checks

        receivers.connect()
