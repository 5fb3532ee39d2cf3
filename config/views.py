"""Django's error pages, in the shape of the surface they answer for."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views import defaults


def page_not_found(request: HttpRequest, exception: Any) -> HttpResponse:
    """A URL no route matches: under /api/ DRF's JSON error (a client parses it), elsewhere Django's page."""
    if request.path.startswith("/api/"):
        return JsonResponse({"detail": "Not found."}, status=404)
    return defaults.page_not_found(request, exception)


def server_error(request: HttpRequest) -> HttpResponse:
    """An unhandled error: under /api/ DRF's JSON shape without details, elsewhere Django's page."""
    if request.path.startswith("/api/"):
        return JsonResponse({"detail": "A server error occurred."}, status=500)
    return defaults.server_error(request)


def permission_denied(request: HttpRequest, exception: Any) -> HttpResponse:
    """A refused action: under /api/ DRF's JSON shape, elsewhere the portal's page saying which role or scope is
    needed (the reason ``PermissionDenied`` was raised with), in production as in development."""
    reason = str(exception or "") or "Your role does not allow this."
    if request.path.startswith("/api/"):
        return JsonResponse({"detail": reason}, status=403)
    from django.shortcuts import render

    return render(request, "portal/403.html", {"reason": reason}, status=403)
