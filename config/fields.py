"""Serializer fields the REST API shares."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

MONTH_PATTERN = r"^2[0-9]{3}-(0[1-9]|1[0-2])$"


@extend_schema_field({"type": "string", "pattern": MONTH_PATTERN, "example": "2024-06"})
class MonthField(serializers.Field):
    """A calendar month as ``YYYY-MM`` (2000 onwards): read as the month's first day, written as ``YYYY-MM``."""

    default_error_messages = {"invalid": "Must be a month as YYYY-MM (2000 onwards), e.g. 2024-06."}

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("help_text", "YYYY-MM (2000 onwards)")
        super().__init__(**kwargs)

    def to_internal_value(self, data: Any) -> dt.date:
        if not isinstance(data, str) or not re.fullmatch(MONTH_PATTERN, data):
            self.fail("invalid")
        return dt.date(int(data[:4]), int(data[5:7]), 1)

    def to_representation(self, value: dt.date) -> str:
        return value.strftime("%Y-%m")


class SlugRelatedField(serializers.SlugRelatedField):
    """DRF's SlugRelatedField, refusing a NUL character before the lookup: PostgreSQL cannot compare text with
    one (the query raises DataError, a 500), and no slug contains one. DRF's CharField refuses them the same way."""

    default_error_messages = {"null_characters_not_allowed": "Null characters are not allowed."}

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, str) and "\x00" in data:
            self.fail("null_characters_not_allowed")
        return super().to_internal_value(data)
