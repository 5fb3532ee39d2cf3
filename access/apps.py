from django.apps import AppConfig


class AccessConfig(AppConfig):
    """Who is calling and what they may do: the ground floor every other app builds on."""

    name = "access"
    default_auto_field = "django.db.models.BigAutoField"
