"""Serializer fields the REST API shares."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers


class SlugRelatedField(serializers.SlugRelatedField):
    """DRF's SlugRelatedField, refusing a NUL character before the lookup: PostgreSQL cannot compare text with
    one (the query raises DataError, a 500), and no slug contains one. DRF's CharField refuses them the same way."""

    default_error_messages = {"null_characters_not_allowed": "Null characters are not allowed."}

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, str) and "\x00" in data:
            self.fail("null_characters_not_allowed")
        return super().to_internal_value(data)
