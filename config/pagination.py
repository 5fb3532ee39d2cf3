"""Pages of the REST API's lists, refusing a malformed ``page`` or ``page_size`` with a 400 naming it.

DRF's paginator ignored a ``page_size`` it could not read (``?page_size=null`` got the default page) and
clipped one above the maximum; the schema types both parameters, and now says their bounds too. A page past
the last is still DRF's 404. A list without an order is ordered by its primary key, so pages are stable.
"""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from rest_framework.exceptions import ValidationError
from rest_framework.pagination import PageNumberPagination
from rest_framework.request import Request


class Pagination(PageNumberPagination):
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 500
    last_page_strings = ()  # ?page=last: the schema says a page is an integer

    def paginate_queryset(self, queryset: Any, request: Request, view: Any = None) -> list[Any] | None:
        if isinstance(queryset, QuerySet) and not queryset.ordered:
            queryset = queryset.order_by("pk")  # without an order, pages may repeat or skip rows
        return super().paginate_queryset(queryset, request, view)

    def get_page_size(self, request: Request) -> int:
        raw = request.query_params.get(self.page_size_query_param)
        if raw is None:
            return self.page_size
        return _integer(raw, self.page_size_query_param, maximum=self.max_page_size)

    def get_page_number(self, request: Request, paginator: Any) -> int:
        raw = request.query_params.get(self.page_query_param)
        return 1 if raw is None else _integer(raw, self.page_query_param)

    def get_schema_operation_parameters(self, view: Any) -> list[dict[str, Any]]:
        parameters = super().get_schema_operation_parameters(view)
        for parameter in parameters:
            parameter["schema"]["minimum"] = 1
            if parameter["name"] == self.page_size_query_param:
                parameter["schema"]["maximum"] = self.max_page_size
        return parameters


def _integer(raw: str, name: str, *, maximum: int | None = None) -> int:
    """``raw`` as a whole number from 1 (to ``maximum``), or a 400 naming the parameter."""
    if not raw.isascii() or not raw.isdigit():
        raise ValidationError({name: ["A whole number is required."]})
    value = int(raw)
    if value < 1:
        raise ValidationError({name: ["Ensure this value is greater than or equal to 1."]})
    if maximum is not None and value > maximum:
        raise ValidationError({name: [f"Ensure this value is less than or equal to {maximum}."]})
    return value
