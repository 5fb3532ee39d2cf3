"""Where drf-spectacular's schema would disagree with what the API answers, generically.

Imported by config/urls.py, so the extension is registered before any schema is generated.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import FieldDoesNotExist
from drf_spectacular.extensions import OpenApiSerializerFieldExtension


class ReadOnlyRelationExtension(OpenApiSerializerFieldExtension):
    """A read-only relation declared on a serializer (``PrimaryKeyRelatedField(read_only=True)``) is answered as
    null whenever its model field is null, whatever the field's own ``allow_null`` says, but spectacular
    documents it nullable only by ``allow_null``: the schema fuzz's "null is not of type integer" (a
    declaration proposal's declared_figure before it is confirmed)."""

    target_class = "rest_framework.relations.RelatedField"
    match_subclasses = True

    def map_serializer_field(self, auto_schema: Any, direction: Any) -> dict[str, Any]:
        schema = auto_schema._map_serializer_field(self.target, direction, bypass_extensions=True)
        if self.target.read_only and _model_field_is_nullable(self.target):
            schema = {**schema, "nullable": True}
        return schema


def _model_field_is_nullable(field: Any) -> bool:
    model = getattr(getattr(field.parent, "Meta", None), "model", None)
    if model is None or not field.source or "." in field.source:
        return False
    try:
        return bool(model._meta.get_field(field.source).null)
    except FieldDoesNotExist:
        return False
