"""A JSON parser for the REST API built on orjson: a 100,000-id activity batch parses several times faster."""

from __future__ import annotations

import json
from typing import Any

import orjson
from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser


class FastJSONParser(JSONParser):
    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        body = stream.read() if stream is not None else b""
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            pass
        # orjson refuses some valid JSON (integers beyond 64 bits, unpaired surrogate escapes): the standard
        # parser reads those, so the validation that follows can name the field and the element.
        try:
            return json.loads(body, parse_constant=_refuse_constant)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ParseError(f"JSON parse error - {exc}") from exc


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")
