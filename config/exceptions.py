"""One error shape for the REST API: DRF's, also for errors Django raises below DRF.

A database that does not answer (restarting, failed over, out of connections) is a 503 with Retry-After on
every surface, never a 500: the request changed nothing (its transaction rolled back), and the client may
send it again, with the same Idempotency-Key where it has one.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import RequestDataTooBig
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import IntegrityError, InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse, JsonResponse
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

DATABASE_UNAVAILABLE = "The database is not answering right now; nothing was changed. Retry shortly."
RETRY_AFTER_SECONDS = "2"


def database_unavailable(exc: BaseException) -> bool:
    """A lost or refused connection, a pool wait that ran out: transient, unlike a constraint or a bad query."""
    return isinstance(exc, (OperationalError, InterfaceError))


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if database_unavailable(exc):
        return Response({"detail": DATABASE_UNAVAILABLE}, status=status.HTTP_503_SERVICE_UNAVAILABLE,
                        headers={"Retry-After": RETRY_AFTER_SECONDS})
    if isinstance(exc, RequestDataTooBig):
        return Response(
            {"detail": "The request body is larger than this service accepts (DATA_UPLOAD_MAX_MEMORY_SIZE)."},
            status=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
        )
    if isinstance(exc, DjangoValidationError):
        detail = exc.message_dict if hasattr(exc, "error_dict") else {"non_field_errors": exc.messages}
        exc = exceptions.ValidationError(detail=detail)
    elif isinstance(exc, IntegrityError):
        # A race lost against a unique constraint: the client's request conflicts with existing data.
        return Response(
            {"detail": "The request conflicts with an existing record (a unique rule was violated)."},
            status=status.HTTP_409_CONFLICT,
        )
    return drf_exception_handler(exc, context)


class DatabaseUnavailableMiddleware:
    """The same 503 for views outside DRF (the portal, the admin), instead of a 500 page."""

    def __init__(self, get_response: Any) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not database_unavailable(exception):
            return None
        response = JsonResponse({"detail": DATABASE_UNAVAILABLE}, status=503)
        response["Retry-After"] = RETRY_AFTER_SECONDS
        return response
