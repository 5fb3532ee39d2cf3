"""One error shape for the REST API: DRF's, also for errors Django raises below DRF."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import RequestDataTooBig
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import IntegrityError
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
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
