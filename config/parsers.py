"""How the REST API reads a JSON body: one function for every path that parses one (DRF's parser below, and the
ingestion fast path in governance/metering/fastpath.py), built on orjson: a 100,000-id activity batch parses several
times faster than with the standard library. DRF's parser also checks the body's JSON types against the
operation's schema (config/schema_types.py)."""

from __future__ import annotations

import json
from typing import Any

import orjson
from django.conf import settings
from rest_framework.exceptions import ParseError, ValidationError
from rest_framework.parsers import JSONParser

from config.schema_types import body_type_errors

# orjson's own limit. The standard library (the fallback below) refuses a little earlier, at Python's recursion
# limit less the frames below the parser; both refusals are this one rule. No request body of this API nests
# more than a few levels.
MAX_JSON_DEPTH = 1024
TOO_DEEP = f"JSON parse error - arrays and objects are nested too deeply (at most {MAX_JSON_DEPTH} levels)."

_JSON_TYPE_NAMES = {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "an array",
                    type(None): "null"}


class RequestTooLarge(ParseError):
    status_code = 413
    default_code = "request_too_large"


def json_object_from(body: bytes) -> dict[str, Any]:
    """The body as a JSON object, or a ParseError (a 400) naming what is wrong with it: not JSON, nested deeper
    than MAX_JSON_DEPTH, or another value than an object. Every request body of this API is an object (its
    schema says so), and views may rely on it: an endpoint that takes another shape needs its own parser."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        if "recursion" in str(exc):  # "array and object recursion depth exceeded"
            raise ParseError(TOO_DEEP) from None
        data = _standard_json(body)
    if not isinstance(data, dict):
        raise ParseError(f"The request body must be a JSON object ({{...}}), not {_JSON_TYPE_NAMES[type(data)]}.")
    return data


def _standard_json(body: bytes) -> Any:
    # orjson refuses some valid JSON (integers beyond 64 bits, unpaired surrogate escapes): the standard parser
    # reads those, so the validation that follows can name the field and the element.
    try:
        return json.loads(body, parse_constant=_refuse_constant)
    except RecursionError:
        raise ParseError(TOO_DEEP) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ParseError(f"JSON parse error - {exc}") from exc


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


class FastJSONParser(JSONParser):
    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        # DRF reads the stream itself, so Django's DATA_UPLOAD_MAX_MEMORY_SIZE would not apply: enforce it here,
        # reading at most one byte past the limit whatever the declared length.
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        body = stream.read(limit + 1) if stream is not None else b""
        if limit is not None and len(body) > limit:
            raise RequestTooLarge(f"The request body is larger than {limit} bytes.")
        data = json_object_from(body)
        request = (parser_context or {}).get("request")
        if request is not None:
            errors = body_type_errors(request.path_info, request.method, data)
            if errors:
                raise ValidationError(errors)
        return data
