"""OPTIONS answers for the API."""

from __future__ import annotations

from typing import Any

from rest_framework.metadata import SimpleMetadata


class Metadata(SimpleMetadata):
    """DRF's metadata, for views whose actions have no single serializer class too (detail actions such as
    a group's policy or a product's activity, which declare their shapes in the OpenAPI schema): DRF asserts
    on those and an OPTIONS request got a 500."""

    def determine_actions(self, request: Any, view: Any) -> dict[str, Any]:
        own_chooser = type(view).get_serializer_class.__qualname__ != "GenericAPIView.get_serializer_class"
        if getattr(view, "serializer_class", None) is None and not own_chooser:
            return {}
        return super().determine_actions(request, view)
