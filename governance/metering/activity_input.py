"""The activity endpoint's input, read by one function for both servers that answer it: the DRF view
(governance/metering/api.py: the schema, WSGI servers) and the ASGI fast path that production serves
(governance/metering/fastpath.py). Editing the rules here changes both; tests/governance/test_activity_input.py sends
the same bodies to both and compares the answers.

The common case, a well-formed batch, is decoded and checked in one pass in C (msgspec: each id a non-empty
string or an integer within 64 bits; booleans and floats are not integers here), half the CPU of parsing with
orjson and then checking the list (bench/mau.py). Anything else takes the general path, which names the
problem with the API's usual messages. Unknown fields are ignored on both paths. The ids themselves (count,
Unicode) are checked by the service, ``activity_ingest``, which every caller goes through.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Annotated, Any, Union

import msgspec
from rest_framework.exceptions import ParseError

from config.parsers import json_object_from
from config.schema_types import body_type_errors
from governance.metering.sketches import INT64_MAX, INT64_MIN

DAY_FORMAT = "Date has wrong format. Use one of these formats instead: YYYY-MM-DD."
_DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


@dataclass(frozen=True)
class ActivityBatch:
    day: dt.date
    user_ids: Any  # a list the typed decoder checked element by element, or whatever JSON value was sent
    elements_checked: bool


class ActivityInputRefused(Exception):
    """The body is not an activity batch: ``status`` (400 or 415) and the error body to answer with."""

    def __init__(self, status: int, errors: dict[str, Any]) -> None:
        super().__init__(errors)
        self.status = status
        self.errors = errors


_Id = Union[Annotated[str, msgspec.Meta(min_length=1)], Annotated[int, msgspec.Meta(ge=INT64_MIN, le=INT64_MAX)]]


class _Activity(msgspec.Struct):
    day: str
    user_ids: list[_Id]


_decoder = msgspec.json.Decoder(_Activity)


def _typed(body: bytes) -> _Activity | None:
    try:
        return _decoder.decode(body)
    except (msgspec.MsgspecError, ValueError, RecursionError):  # invalid JSON, a bad element, bytes that are not
        return None  # UTF-8, nesting too deep (even in a field it skips) ...: the general path names the problem


def _day(value: object) -> dt.date | None:
    """A YYYY-MM-DD calendar day (not the other forms ``date.fromisoformat`` takes, such as 20240105)."""
    if not isinstance(value, str) or not _DAY.fullmatch(value):
        return None
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        return None


def _media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def activity_input(body: bytes, *, content_type: str | None, path: str) -> ActivityBatch:
    """The batch in ``body``, or ActivityInputRefused naming what is wrong with it."""
    media_type = _media_type(content_type)
    if media_type and media_type != "application/json":
        raise ActivityInputRefused(415, {"detail": f'Unsupported media type "{content_type}" in request.'})
    checked = _typed(body)
    if checked is not None:
        day = _day(checked.day)
        if day is not None:
            return ActivityBatch(day, checked.user_ids, True)
    try:
        data = json_object_from(body)  # the API's JSON rules and messages (config/parsers.py)
    except ParseError as exc:
        raise ActivityInputRefused(400, {"detail": str(exc.detail)}) from exc
    wrong_types = body_type_errors(path, "POST", data)
    if wrong_types:
        raise ActivityInputRefused(400, wrong_types)
    errors: dict[str, list[str]] = {}
    day = None
    if "day" not in data:
        errors["day"] = ["This field is required."]
    else:
        day = _day(data["day"])
        if day is None:
            errors["day"] = [DAY_FORMAT]
    if "user_ids" not in data:
        errors["user_ids"] = ["This field is required."]
    if errors:
        raise ActivityInputRefused(400, errors)
    assert day is not None
    return ActivityBatch(day, data["user_ids"], False)
