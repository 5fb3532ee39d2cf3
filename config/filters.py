"""Filtering for the REST API: django-filter, refusing a query parameter the schema types when its value is not
of that type, so the schema and the API agree (a 400 naming the parameter, never a filter silently dropped).

django-filter already refuses a malformed number, date, choice or id; its boolean filter turned anything but
true/false/1/0 (``?revoked=null``) into "no filter". Every FilterSet of the API derives from ``FilterSet``
here, and ``FilterBackend`` builds the ones views declare with ``filterset_fields`` from it too.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.core.exceptions import ValidationError
from django.db import models
from django_filters import filters
from django_filters import rest_framework as django_filters


class StrictBooleanField(forms.NullBooleanField):
    """true or false (and 1 or 0, as django-filter reads them), in any case; absent or empty is no filter."""

    widget = forms.TextInput  # the raw value: NullBooleanField's own widget reads anything else as "unknown"

    def to_python(self, value: Any) -> bool | None:
        if value in (None, ""):
            return None
        lowered = str(value).lower()
        if lowered in ("true", "1"):
            return True
        if lowered in ("false", "0"):
            return False
        raise ValidationError("Must be true or false.", code="invalid")

    def validate(self, value: Any) -> None:
        pass


class BooleanFilter(filters.BooleanFilter):
    field_class = StrictBooleanField


class IntegerFilter(filters.NumberFilter):
    """An id or a count: django-filter's NumberFilter takes any decimal (``?product=1.5``)."""

    field_class = forms.IntegerField


class FilterSet(django_filters.FilterSet):
    FILTER_DEFAULTS = {
        **django_filters.FilterSet.FILTER_DEFAULTS,
        models.BooleanField: {"filter_class": BooleanFilter},
    }


class FilterBackend(django_filters.DjangoFilterBackend):
    filterset_base = FilterSet
