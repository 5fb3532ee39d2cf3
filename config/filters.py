"""Filtering for the REST API: django-filter, refusing a query parameter the schema types when its value is not
of that type, so the schema and the API agree (a 400 naming the parameter, never a filter silently dropped).

django-filter already refuses a malformed number, choice or id; its boolean filter turned anything but
true/false/1/0 (``?revoked=null``) into "no filter", and its date filters read any format Django knows
(15/01/2026, a time without an offset) where the schema says ISO 8601 / RFC 3339. Every FilterSet of the API
derives from ``FilterSet`` here, and ``FilterBackend`` builds the ones views declare with ``filterset_fields``
from it too.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from django import forms
from django.core.exceptions import ValidationError
from django.db import models
from django_filters import filters
from django_filters import rest_framework as django_filters

_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_DATE_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?"
                        r"([Zz]|[+-][0-9]{2}:[0-9]{2})")


def iso_date(value: object) -> dt.date | None:
    """``value`` as a date when it is one written YYYY-MM-DD (the schema's ``format: date``), else None. Python's
    ``date.fromisoformat`` alone also reads 20261101 and 2026-W48-1."""
    if not isinstance(value, str) or not _DATE.fullmatch(value):
        return None
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        return None


class StrictBooleanField(forms.NullBooleanField):
    """true or false (and 1 or 0, as django-filter reads them), in any case; absent is no filter."""

    widget = forms.TextInput  # the raw value: NullBooleanField's own widget reads anything else as "unknown"

    # django-stubs type NullBooleanField.to_python as BooleanField's (bool); Django's returns None for "unknown".
    def to_python(self, value: Any) -> bool | None:  # type: ignore[override]
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


class IsoDateField(forms.DateField):
    """YYYY-MM-DD, as the schema's ``format: date`` says (Django's date field also reads 15/01/2026 and more)."""

    def to_python(self, value: Any) -> dt.date | None:
        if value in self.empty_values:
            return None
        day = iso_date(value)
        if day is None:
            raise ValidationError("Enter a date as YYYY-MM-DD.", code="invalid")
        return day


class DateFilter(filters.DateFilter):
    field_class = IsoDateField


class Rfc3339DateTimeField(forms.DateTimeField):
    """A date, a time and its offset (2026-12-05T10:00:00Z), as the schema's ``format: date-time`` says: a time
    without an offset would be read in the server's time zone."""

    def to_python(self, value: Any) -> dt.datetime | None:
        if value in self.empty_values:
            return None
        if isinstance(value, str) and _DATE_TIME.fullmatch(value):
            try:
                # In UTC: PostgreSQL refuses offsets beyond 15:59 (RFC 3339 allows up to 23:59), a 500.
                return dt.datetime.fromisoformat(value.upper()).astimezone(dt.UTC)
            except ValueError:
                pass
            except OverflowError:  # 0001-01-01T00:00:00+01:00 is in year 0
                raise ValidationError("Enter a date and time between the years 1 and 9999.", code="invalid") from None
        raise ValidationError("Enter a date and time with its offset, as 2026-12-05T10:00:00Z.", code="invalid")


class DateTimeFilter(filters.IsoDateTimeFilter):
    # types-django-filter narrow field_class to the default's type; django-filter takes any form field class.
    field_class = Rfc3339DateTimeField  # type: ignore[assignment]


class IntegerFilter(filters.NumberFilter):
    """An id or a count: django-filter's NumberFilter takes any decimal (``?product=1.5``)."""

    field_class = forms.IntegerField  # type: ignore[assignment]  # as DateTimeFilter's: any form field class


class FilterSet(django_filters.FilterSet):
    FILTER_DEFAULTS = {
        **django_filters.FilterSet.FILTER_DEFAULTS,
        models.BooleanField: {"filter_class": BooleanFilter},
        models.DateField: {"filter_class": DateFilter},
        models.DateTimeField: {"filter_class": DateTimeFilter},
    }

    def is_valid(self) -> bool:
        """django-filter reads an empty value as an absent one (an HTML form sends every field); here a
        parameter that is given needs a value of its type: ``?released_before=`` is no date. An empty text
        filter (``?name=``) is still no filter: the empty string is a string."""
        valid = super().is_valid()
        data = self.data or {}  # a FilterSet's data is never None (it stores `data or {}`), the stubs allow it
        for name, declared in self.filters.items():
            if data.get(name) == "" and not isinstance(declared.field, forms.CharField):
                self.form.add_error(name, "A value is required when the parameter is given.")
                valid = False
        return valid


class FilterBackend(django_filters.DjangoFilterBackend):
    filterset_base = FilterSet
