"""Middleware of the web process: response headers Django's SecurityMiddleware does not set, and lookups."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.core.exceptions import ValidationError
from django.db import models
from django.http import HttpRequest, HttpResponse, JsonResponse

# The portal has no inline script; its charts colour legends with inline style attributes.
CONTENT_SECURITY_POLICY = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
                           "img-src 'self' data:; object-src 'none'; base-uri 'none'; form-action 'self'; "
                           "frame-ancestors 'none'")


class SecurityHeadersMiddleware:
    """API answers are one tenant's data, and some carry a secret shown once (a new key, a webhook secret):
    no cache keeps them. Pages get a Content-Security-Policy (the API's Swagger UI, with its inline script,
    is under /api/ and gets none)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if request.path.startswith("/api/"):
            response.headers.setdefault("Cache-Control", "no-store")
        elif response.get("Content-Type", "").startswith("text/html"):
            response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        return response


def lookup_value_fits(field: models.Field, value: str) -> bool:
    """Whether ``value``, taken from a URL, is something ``field`` can hold. No row matches a value its field
    cannot hold, and some databases raise instead of finding nothing (PostgreSQL on a NUL character)."""
    if "\x00" in value:  # no text column of PostgreSQL holds one, and no other kind of value contains one
        return False
    try:
        python = field.to_python(value)  # an integer field refuses "1.5" and "abc"
        if isinstance(field, models.IntegerField):
            for validator in field.validators:  # the range of this database's column
                validator(python)
    except ValidationError:
        return False
    max_length = getattr(field, "max_length", None)
    return not (isinstance(python, str) and max_length is not None and len(python) > max_length)


class LookupMiddleware:
    """An object URL of the REST API whose lookup value (``{id}``, ``{slug}``) its model field cannot hold is a
    404 before the view runs, as a URL no route matches is (``1.5`` is one already: ids match ``[^/.]+``).
    Checked here once for every viewset instead of in each view's lookup: a NUL character in a slug was a 500
    on PostgreSQL."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_view(self, request: HttpRequest, view_func: Any, view_args: Any,
                     view_kwargs: dict[str, Any]) -> HttpResponse | None:
        view = getattr(view_func, "cls", None)  # DRF's views carry their class
        queryset = getattr(view, "queryset", None)
        if view is None or queryset is None or not view_kwargs:
            return None
        lookup_field = view.lookup_field
        value = view_kwargs.get(view.lookup_url_kwarg or lookup_field)
        if not isinstance(value, str):
            return None
        meta = queryset.model._meta
        field = meta.pk if lookup_field == "pk" else meta.get_field(lookup_field)
        if not lookup_value_fits(field, value):
            # The API's own 404, in development too (Django's debug page would answer HTML to an API client).
            return JsonResponse({"detail": "Not found."}, status=404)
        return None
