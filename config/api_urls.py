"""The tenant REST API, /api/v1/: each app contributes its routes."""

from django.urls import include, path

urlpatterns = [
    path("", include("licensing.api.urls")),
    path("", include("governance.api.urls")),
    path("", include("inference.api.urls")),
]
