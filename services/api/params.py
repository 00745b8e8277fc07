"""Request parameters: one pydantic model per place (query, path, headers) per route.

The same models validate the request and describe it in the OpenAPI document, so the document allows
exactly what the api accepts. A query value is text on the wire; each typed parameter reads it the way
OpenAPI serialises its type (an integer or a number as a JSON literal, a boolean as `true`/`false`), and
nothing looser: `limit=05`, `annotated=1` or `since=nan` are not what the document describes, so they
are refused.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, WithJsonSchema, create_model
from pydantic_core import ErrorDetails

from services.api.errors import bad_request
from shared.contracts import EVENT_ID_PATTERN, SOURCE_ID_PATTERN, EventState
from shared.validation import describe_error, describe_errors, error_message, field_path

_JSON_INT = re.compile(r"^-?(0|[1-9][0-9]*)$")
_JSON_NUMBER = re.compile(r"^-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?$")
# RFC 3339 §5.6 (what `format: date-time` and `format: date` mean), with its case-insensitive T and Z.
_RFC3339_DATE = r"(\d{4})-(\d{2})-(\d{2})"
_DATE = re.compile(rf"^{_RFC3339_DATE}$")
_DATE_TIME = re.compile(rf"^{_RFC3339_DATE}[Tt](\d{{2}}):(\d{{2}}):(\d{{2}})(\.\d+)?([Zz]|([+-])(\d{{2}}):(\d{{2}}))$")
_EPOCH = datetime(1970, 1, 1)
# A cursor is what `Cursor.encode` writes: the last event's start (a float's repr) and its id.
CURSOR_PATTERN = r"^-?[0-9]+(\.[0-9]+)?(e[+-][0-9]+)?_[A-Za-z0-9_-]{1,128}$"
# One or more byte ranges (RFC 9110 §14.1.2); several get the whole body, one that misses the clip gets 416.
# Empty is allowed and means no range: HTTP clients send and strip blank header values alike.
# A zone's name, as services/registrator/zones.py allows it: letters, digits, '-' and '_'.
ZONE_NAME_PATTERN = r"^[\w-]{1,128}$"
RANGE_PATTERN = r"^(bytes=([0-9]+-[0-9]*|-[0-9]+)(, *([0-9]+-[0-9]*|-[0-9]+))*)?$"


def _json_int(text: Any) -> Any:
    if isinstance(text, str):
        if not _JSON_INT.match(text):
            raise ValueError("must be an integer")
        return int(text)
    return text


def _bool(text: Any) -> Any:
    if isinstance(text, str):
        if text not in ("true", "false"):
            raise ValueError("must be true or false")
        return text == "true"
    return text


def unix_time(text: Any) -> Any:
    """Unix seconds (a JSON number; one too large for a float is an unbounded end), an RFC 3339 date-time,
    or a date (its midnight, UTC). Never nan: no JSON number or date spells it."""
    if not isinstance(text, str):
        return text
    if _JSON_NUMBER.match(text):
        return float(text)
    if m := _DATE.match(text):
        return _unix(m.group(1, 2, 3), (0, 0, 0), 0)
    if m := _DATE_TIME.match(text):
        offset = 0
        if m.group(9):
            hours, minutes = int(m.group(10)), int(m.group(11))
            if hours > 23 or minutes > 59:
                raise ValueError("is not a valid UTC offset")
            offset = (hours * 60 + minutes) * (1 if m.group(9) == "+" else -1)
        hms = (int(m.group(4)), int(m.group(5)), int(m.group(6)))
        return _unix(m.group(1, 2, 3), hms, offset) + float(m.group(7) or 0)
    raise ValueError("is neither unix seconds, an RFC 3339 date-time nor a date")


def _unix(ymd: tuple[str, ...], hms: tuple[int, int, int], offset_minutes: int) -> float:
    """Seconds since the epoch, summed from the parts, so that an offset near year 1 or 9999 cannot push
    a datetime out of its range."""
    hour, minute, second = hms
    # A leap second (RFC 3339 §5.7) is 23:59:60 in UTC only; it counts as the next day's first second.
    leap = second == 60 and (hour * 60 + minute - offset_minutes) % 1440 == 1439
    try:
        year, month, day = (int(x) for x in ymd)
        naive = datetime(year, month, day, hour, minute, 59 if leap else second)
    except ValueError:
        raise ValueError("is not a valid date or time") from None
    return (naive - _EPOCH).total_seconds() + leap - offset_minutes * 60


JsonInt = Annotated[int, BeforeValidator(_json_int)]
JsonBool = Annotated[bool, BeforeValidator(_bool)]
UnixTime = Annotated[
    float,
    BeforeValidator(unix_time),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number"},
                {"type": "string", "format": "date-time"},
                {"type": "string", "format": "date"},
            ]
        }
    ),
]


class Params(BaseModel):
    """Parameters in one place of a request; any name it does not declare is refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class NoQuery(Params):
    pass


class SourcePath(Params):
    source_id: str = Field(pattern=SOURCE_ID_PATTERN, description="the source's id", examples=["cam0"])


class EventPath(Params):
    event_id: str = Field(pattern=EVENT_ID_PATTERN, description="the event's id", examples=["cam0-0e0428da6e1d4c7a"])


class EventsQuery(Params):
    source: str | None = Field(None, pattern=SOURCE_ID_PATTERN, description="only this source's events", examples=["cam0"])
    label: str | None = Field(None, min_length=1, max_length=128, description="only events of this label", examples=["person"])
    state: EventState | None = Field(None, description="only events in this state", examples=["FINISHED"])
    zone: str | None = Field(
        None,
        pattern=ZONE_NAME_PATTERN,
        description="only events whose object entered this zone (a name under zones.<source>.zones)",
        examples=["drive"],
    )
    sub_label: str | None = Field(
        None, min_length=1, max_length=128, description="only events with this sub-label (the cascade's)", examples=["cab"]
    )
    stationary: JsonBool | None = Field(
        None, description="only events whose object stopped moving (true), or only those that did not (false)", examples=[False]
    )
    since: UnixTime | None = Field(
        None,
        description="events that started at or after this time (unix seconds, "
        "an RFC 3339 date-time, or a date: its midnight UTC)",
        examples=["2026-11-29T20:00:00Z", 1795982875.5],
    )
    until: UnixTime | None = Field(
        None,
        description="events that started at or before this time (as since; until before since is an empty range)",
        examples=["2026-11-30"],
    )
    limit: JsonInt = Field(50, ge=1, description="events per page", examples=[20])
    cursor: str | None = Field(
        None,
        pattern=CURSOR_PATTERN,
        description="next_cursor of the previous page",
        examples=["1795982875.8444576_cam0-0e0428da6e1d4c7a"],
    )


def events_query(page_limit: int) -> type[EventsQuery]:
    """EventsQuery with the configured page limit as `limit`'s maximum."""
    return create_model(
        "EventsQuery",
        __base__=EventsQuery,
        limit=(JsonInt, Field(50, ge=1, le=page_limit, description="events per page", examples=[20])),
    )


class KeyframeQuery(Params):
    annotated: JsonBool = Field(False, description="with the event's boxes drawn", examples=[True])


class Headers(BaseModel):
    """Headers a route reads. Requests carry many more (Host, User-Agent, ...): those are not the api's."""

    model_config = ConfigDict(extra="ignore", frozen=True)


class NoHeaders(Headers):
    pass


class ClipHeaders(Headers):
    range: str | None = Field(
        None,
        alias="Range",
        pattern=RANGE_PATTERN,
        description="byte ranges of the clip; one gets 206, several or none the whole clip",
    )


def parse_query(model: type[Params], values: Mapping[str, str], where: str = "query") -> Params:
    """`values` (a multidict) as `model`, or a 400 naming every bad parameter."""
    given: dict[str, str] = {}
    for name, value in values.items():
        if name in given:
            raise bad_request(f"{where} parameter {name!r} is given more than once")
        given[name] = value
    return _validate(model, given, where)


def parse_headers(model: type[Headers], headers: Mapping[str, str]) -> Headers:
    # The request's headers are case-insensitive; pick out only the declared ones, by their declared names.
    names = [field.alias or name for name, field in model.model_fields.items()]
    return _validate(model, {n: headers[n] for n in names if n in headers}, "header")


M = TypeVar("M", bound=BaseModel)


def _validate(model: type[M], given: dict[str, str], where: str) -> M:
    try:
        return model.model_validate(given)
    except ValidationError as exc:
        raise bad_request(describe_errors(exc, describe=lambda error: _describe(error, where))) from None


def _describe(error: ErrorDetails, where: str) -> str:
    # A request's own values are echoed (unlike settings' or messages'): they are short, and the caller sent them.
    name = field_path(error)
    if error["type"] == "extra_forbidden":
        return f"unknown {where} parameter {name!r}"
    value = error.get("input")
    return f"{name}={value!r}: {error_message(error)}" if isinstance(value, str) else describe_error(error)
