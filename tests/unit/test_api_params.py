"""The api's request models and its OpenAPI document, without servers: what a query value means on the wire,
and that the document built from the route table is whole (every reference resolves, every route is in it)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from multidict import CIMultiDict, MultiDict

from services.api.app import openapi_document, routes
from services.api.errors import ApiError
from services.api.params import ClipHeaders, EventsQuery, KeyframeQuery, events_query, parse_headers, parse_query
from services.api.queries import Cursor
from services.api.settings import ApiSettings
from tests.support.settings import settings_from


def query(text: str, model: type[Any] = EventsQuery) -> Any:
    return parse_query(model, MultiDict(pair.split("=", 1) for pair in text.split("&") if pair))


@pytest.mark.parametrize(
    ("text", "field", "value"),
    [
        ("limit=7", "limit", 7),
        ("since=1795982875.5", "since", 1795982875.5),
        ("since=-1.5e-07", "since", -1.5e-07),
        ("since=1e400", "since", float("inf")),  # a JSON number, past a double: an unbounded end
        ("since=1970-01-02", "since", 86400.0),
        ("since=1970-01-01T01:00:00Z", "since", 3600.0),
        ("since=1970-01-01t01:00:00.25z", "since", 3600.25),
        ("since=1970-01-01T01:00:00%2B01:00".replace("%2B", "+"), "since", 0.0),
        ("since=1972-06-30T23:59:60Z", "since", 78796800.0),  # a leap second is the next minute's first
        ("since=1972-07-01T00:59:60%2B01:00".replace("%2B", "+"), "since", 78796800.0),  # ... at 23:59 UTC
        ("since=9999-12-31T23:59:60.5Z", "since", 253402300800.5),
        ("since=9999-12-31T23:59:59-23:59", "since", 253402387139.0),  # past datetime's range once in UTC
        ("zone=front_door-2", "zone", "front_door-2"),
        ("sub_label=police van", "sub_label", "police van"),
        ("stationary=true", "stationary", True),
        ("stationary=false", "stationary", False),
    ],
)
def test_values_the_document_allows_are_read(text: str, field: str, value: Any) -> None:
    assert getattr(query(text), field) == value


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("since=nan", "since='nan': is neither"),
        ("since=NaN", "since='NaN': is neither"),
        ("since=inf", "since='inf': is neither"),
        ("since=-Infinity", "is neither"),
        ("since=1970-01-01T01:00:00", "is neither"),  # RFC 3339 wants an offset
        ("since=1970-02-30", "is not a valid date or time"),
        ("since=1972-06-30T12:00:60Z", "is not a valid date or time"),  # leap seconds end a UTC day only
        ("since=1970-01-01T00:00:00%2B24:00".replace("%2B", "+"), "is not a valid UTC offset"),
        ("limit=+5", "must be an integer"),
        ("limit=5.0", "must be an integer"),
        ("limit=0", "greater than or equal to 1"),
        ("state=done", "Input should be"),
        ("cursor=nan_x", "should match pattern"),
        ("page=2", "unknown query parameter 'page'"),
        ("zone=", "zone='': String should match pattern"),
        ("zone=a:b", "zone='a:b': String should match pattern"),
        ("sub_label=", "sub_label='': String should have at least 1 character"),
        ("stationary=1", "stationary='1': must be true or false"),
        ("stationary=yes", "must be true or false"),
        ("zones=drive", "unknown query parameter 'zones'"),
        ("limit=1&limit=1", "given more than once"),
    ],
)
def test_values_it_does_not_allow_are_refused(text: str, message: str) -> None:
    with pytest.raises(ApiError) as caught:
        query(text)
    assert caught.value.status == 400 and message in caught.value.message


def test_booleans_are_the_two_json_words() -> None:
    assert query("annotated=true", KeyframeQuery).annotated is True
    assert query("", KeyframeQuery).annotated is False
    for word in ("1", "True", "yes", ""):
        with pytest.raises(ApiError):
            query(f"annotated={word}", KeyframeQuery)


def test_the_page_limit_is_the_configured_one() -> None:
    with pytest.raises(ApiError, match="less than or equal to 30"):
        query("limit=31", events_query(30))
    assert query("limit=30", events_query(30)).limit == 30


def test_every_cursor_the_api_writes_matches_its_documented_pattern() -> None:
    for start in (1795982875.8444576, 1e16, -3.0, 0.0, 1.5e-07):
        encoded = Cursor(start, "cam0-person-0e0428da6e1d").encode()
        assert Cursor.decode(query(f"cursor={encoded}").cursor).start_wall == start


def test_headers_are_read_by_name_whatever_their_case() -> None:
    read = parse_headers(ClipHeaders, CIMultiDict({"range": "bytes=0-9", "Host": "x"}))  # others are not the api's
    assert isinstance(read, ClipHeaders) and read.range == "bytes=0-9"
    with pytest.raises(ApiError, match="Range='lines=0-5'"):
        parse_headers(ClipHeaders, CIMultiDict({"RANGE": "lines=0-5"}))


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if "$ref" in node else []
        return own + [r for v in node.values() for r in _refs(v)]
    return [r for v in node for r in _refs(v)] if isinstance(node, list) else []


@pytest.mark.parametrize("token", ["", "Kq9xQ2mZ7vB4nT8wR1yH5jL3pF6sD0gA"])
def test_the_document_is_whole(token: str) -> None:
    doc = openapi_document(settings_from(ApiSettings, api_token=token))
    schemas = doc["components"]["schemas"]
    assert "$defs" not in json.dumps(doc)
    assert {r.removeprefix("#/components/schemas/") for r in _refs(doc)} <= set(schemas)
    assert set(doc["paths"]) == {r.path for r in routes(200)}
    for path in doc["paths"].values():
        operation = path["get"]
        assert ("401" in operation["responses"]) == (bool(token) and operation["operationId"] != "get_openapi")
        for parameter in operation["parameters"]:  # each one described and typed
            assert parameter["description"] and {"type", "anyOf", "$ref"} & set(parameter["schema"]), parameter
    assert ("security" in doc) == bool(token)
