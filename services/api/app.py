"""The api's HTTP application: `/api/v1` (JSON, described by its OpenAPI document) and the dashboard page.

The route table below is the one place a route is declared: the aiohttp router and the OpenAPI document
are both built from it, so they cannot disagree.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import resources
from typing import Any

from aiohttp import web

from services.api.errors import ApiError, bad_request, error_response, not_found
from services.api.proof_cache import ProofCache
from services.api.queries import Cursor, EventFilter, FleetView
from services.api.ranges import UnsatisfiableRange, parse_range
from services.api.settings import ApiSettings
from shared.contracts import Event, EventState, Heartbeat, SourceHealth
from shared.storage import StorageError

API = "/api/v1"
TOKEN_COOKIE = "vigil_token"
_EVENT_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
# Fields of the stored record that only make sense inside the fleet (local paths, storage URLs):
# the api links to the proofs through itself instead.
_INTERNAL_FIELDS = {"video_proofs", "video_proof_path", "image_proofs", "image_proof_path", "image_annotated_proofs"}
# Served files: a fixed table, so no part of a request ever becomes a file-system path.
_STATIC = {"app.js": "text/javascript", "style.css": "text/css"}
_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; media-src 'self'; object-src 'none'; "
    "frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
}

log = logging.getLogger("vigil.api")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Param:
    name: str
    description: str
    schema: dict[str, Any]
    where: str = "query"


@dataclass(frozen=True)
class Route:
    path: str
    handler: Handler
    summary: str
    params: tuple[Param, ...] = ()
    responses: dict[str, str] = field(default_factory=lambda: {"200": "OK"})
    content_type: str = "application/json"
    schema: str | None = None  # a component schema name for the 200 body


# ---------------------------------------------------------------- helpers


def _view(request: web.Request) -> FleetView:
    return request.app[VIEW]


def _json(doc: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, text=json.dumps(doc), content_type="application/json")


def public_event(event: Event) -> dict[str, Any]:
    doc = event.model_dump(mode="json", exclude=_INTERNAL_FIELDS)
    base = f"{API}/events/{event.id}"
    doc["links"] = {
        "self": base,
        "clip": f"{base}/clip" if event.video_proofs else None,
        "keyframe": f"{base}/keyframe" if event.image_proofs else None,
        "keyframe_annotated": f"{base}/keyframe?annotated=true" if event.image_annotated_proofs else None,
    }
    return doc


def _time_param(request: web.Request, name: str) -> float | None:
    """Unix seconds or ISO 8601 (a time without zone is UTC)."""
    text = request.query.get(name)
    if text is None or text == "":
        return None
    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise bad_request(f"{name}={text!r} is neither unix seconds nor an ISO 8601 time") from None
    return (when if when.tzinfo else when.replace(tzinfo=timezone.utc)).timestamp()


def _bool_param(request: web.Request, name: str) -> bool:
    text = request.query.get(name, "false").lower()
    if text not in ("true", "false", "1", "0"):
        raise bad_request(f"{name}={text!r} must be true or false")
    return text in ("true", "1")


async def _event_or_404(request: web.Request) -> Event:
    event_id = request.match_info["event_id"]
    if not _EVENT_ID.match(event_id):
        raise bad_request(f"{event_id!r} is not an event id")
    event = await _view(request).event(event_id)
    if event is None:
        raise not_found(f"no event {event_id}")
    return event


# ---------------------------------------------------------------- handlers


async def list_events(request: web.Request) -> web.Response:
    settings: ApiSettings = request.app[SETTINGS]
    q = request.query
    try:
        limit = int(q.get("limit", "50"))
    except ValueError:
        raise bad_request(f"limit={q['limit']!r} is not a number") from None
    if not 1 <= limit <= settings.api_page_limit:
        raise bad_request(f"limit must be between 1 and {settings.api_page_limit}")
    state = q.get("state")
    if state and state.upper() not in EventState.__members__:
        raise bad_request(f"state={state!r} is not one of {', '.join(EventState.__members__)}")
    where = EventFilter(
        source_id=q.get("source") or None,
        label=q.get("label") or None,
        state=EventState(state.upper()) if state else None,
        since=_time_param(request, "since"),
        until=_time_param(request, "until"),
    )
    if where.since is not None and where.until is not None and where.since > where.until:
        raise bad_request("since is after until")
    try:
        cursor = Cursor.decode(q["cursor"]) if q.get("cursor") else None
    except ValueError as exc:
        raise bad_request(str(exc)) from None
    page = await _view(request).events(where, limit, cursor)
    return _json({
        "events": [public_event(e) for e in page.events],
        "next_cursor": page.next_cursor.encode() if page.next_cursor else None,
    })


async def get_event(request: web.Request) -> web.Response:
    return _json(public_event(await _event_or_404(request)))


async def get_clip(request: web.Request) -> web.Response:
    event = await _event_or_404(request)
    if not event.video_proofs:
        raise not_found(f"event {event.id} has no clip (state {event.state.value})")
    data = await request.app[PROOFS].get(event.video_proofs)
    size = len(data)
    headers = {"Accept-Ranges": "bytes", "Cache-Control": "private, max-age=3600"}
    try:
        wanted = parse_range(request.headers.get("Range"), size)
    except UnsatisfiableRange as exc:
        raise ApiError(416, str(exc), {"Content-Range": f"bytes */{size}"}) from None
    if wanted is None:
        return web.Response(body=data, content_type="video/mp4", headers=headers)
    first, last = wanted
    headers["Content-Range"] = f"bytes {first}-{last}/{size}"
    return web.Response(status=206, body=data[first:last + 1], content_type="video/mp4", headers=headers)


async def get_keyframe(request: web.Request) -> web.Response:
    event = await _event_or_404(request)
    url = event.image_annotated_proofs if _bool_param(request, "annotated") else event.image_proofs
    if not url:
        raise not_found(f"event {event.id} has no key frame (state {event.state.value})")
    data = await request.app[PROOFS].get(url)
    return web.Response(body=data, content_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})


async def list_services(request: web.Request) -> web.Response:
    return _json({"models": await _view(request).workers()})


async def list_sources(request: web.Request) -> web.Response:
    return _json({"sources": [h.model_dump(mode="json") for h in await _view(request).sources()]})


async def get_totals(request: web.Request) -> web.Response:
    return _json({"sources": await _view(request).totals()})


async def get_openapi(request: web.Request) -> web.Response:
    return _json(openapi_document())


async def dashboard(request: web.Request) -> web.Response:
    return web.Response(text=_asset("index.html"), content_type="text/html", headers=_PAGE_HEADERS)


async def static_file(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in _STATIC:
        raise not_found(f"no file {name!r}")
    return web.Response(text=_asset(name), content_type=_STATIC[name], headers={"Cache-Control": "no-cache"})


async def healthz(request: web.Request) -> web.Response:
    return _json({"ok": True, "service": "api"})


def _asset(name: str) -> str:
    return resources.files("services.api").joinpath("static", name).read_text(encoding="utf-8")


# ---------------------------------------------------------------- the route table

_ID = Param("event_id", "the event's id", {"type": "string", "pattern": _EVENT_ID.pattern}, "path")
ROUTES = (
    Route(f"{API}/events", list_events, "Events, newest first, filtered and paged", (
        Param("source", "only this source's events", {"type": "string"}),
        Param("label", "only events of this label", {"type": "string"}),
        Param("state", "only events in this state", {"type": "string", "enum": [s.value for s in EventState]}),
        Param("since", "events that started at or after this time (unix seconds or ISO 8601)", {"type": "string"}),
        Param("until", "events that started at or before this time (unix seconds or ISO 8601)", {"type": "string"}),
        Param("limit", "events per page", {"type": "integer", "minimum": 1, "default": 50}),
        Param("cursor", "next_cursor of the previous page", {"type": "string"}),
    ), {"200": "a page of events", "400": "a bad parameter"}, schema="EventPage"),
    Route(f"{API}/events/{{event_id}}", get_event, "One event", (_ID,),
          {"200": "the event", "400": "not an event id", "404": "no such event"}, schema="Event"),
    Route(f"{API}/events/{{event_id}}/clip", get_clip, "The event's MP4 proof clip (H.264); Range requests allowed", (_ID,),
          {"200": "the clip", "206": "part of the clip", "404": "no such event, or no clip yet",
           "416": "a range outside the clip"}, "video/mp4"),
    Route(f"{API}/events/{{event_id}}/keyframe", get_keyframe, "The event's key frame", (
        _ID, Param("annotated", "with the event's boxes drawn", {"type": "boolean", "default": False}),
    ), {"200": "the JPEG", "404": "no such event, or no key frame yet"}, "image/jpeg"),
    Route(f"{API}/services", list_services, "Live model workers, from their heartbeats", schema="Services"),
    Route(f"{API}/sources", list_sources, "Sources with their state, fps and drops", schema="Sources"),
    Route(f"{API}/totals", get_totals, "Frames read, routed, inferred and dropped, and events, per source and model"),
    Route(f"{API}/openapi.json", get_openapi, "This document"),
)


def openapi_document() -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for route in ROUTES:
        responses: dict[str, Any] = {}
        for status, description in route.responses.items():
            entry: dict[str, Any] = {"description": description}
            if status in ("200", "206"):
                body = {"$ref": f"#/components/schemas/{route.schema}"} if route.schema else {}
                entry["content"] = {route.content_type: {"schema": body}}
            else:
                entry["content"] = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
            responses[status] = entry
        responses.setdefault("401", {"description": "a token is configured and this request lacks it"})
        paths[route.path] = {"get": {
            "summary": route.summary,
            "operationId": route.handler.__name__,
            "parameters": [
                {"name": p.name, "in": p.where, "required": p.where == "path", "description": p.description, "schema": p.schema}
                for p in route.params
            ],
            "responses": responses,
        }}
    event = Event.model_json_schema(ref_template="#/components/schemas/{model}")
    for name in _INTERNAL_FIELDS:
        event["properties"].pop(name, None)
    event["properties"]["links"] = {"type": "object", "additionalProperties": {"type": ["string", "null"]}}
    defs = event.pop("$defs", {})
    return {
        "openapi": "3.1.0",
        "info": {"title": "Vigil api", "version": "1", "description": "Events, proof clips and the fleet's state."},
        "paths": paths,
        "components": {
            "schemas": defs | {
                "Event": event,
                "EventPage": {"type": "object", "properties": {
                    "events": {"type": "array", "items": {"$ref": "#/components/schemas/Event"}},
                    "next_cursor": {"type": ["string", "null"]},
                }},
                "SourceHealth": SourceHealth.model_json_schema(),
                "Sources": {"type": "object", "properties": {
                    "sources": {"type": "array", "items": {"$ref": "#/components/schemas/SourceHealth"}}}},
                "Heartbeat": Heartbeat.model_json_schema(),
                "Services": {"type": "object", "properties": {"models": {"type": "object", "additionalProperties": {
                    "type": "array", "items": {"$ref": "#/components/schemas/Heartbeat"}}}}},
                "Error": {"type": "object", "properties": {"error": {"type": "object", "properties": {
                    "status": {"type": "integer"}, "message": {"type": "string"}}}}},
            },
            "securitySchemes": {"token": {"type": "http", "scheme": "bearer"}},
        },
    }


# ---------------------------------------------------------------- middlewares and assembly

VIEW = web.AppKey("view", FleetView)
PROOFS = web.AppKey("proofs", ProofCache)
SETTINGS = web.AppKey("settings", ApiSettings)


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return exc.response()
    except web.HTTPException as exc:  # the router's own 404/405
        if exc.status < 400:
            raise
        return error_response(exc.status, exc.reason)
    except StorageError as exc:
        log.warning("proof unavailable: %s", exc)
        return error_response(503, "the proof storage is unavailable; try again")
    except Exception:  # noqa: BLE001 - one bad request must not take the api down
        log.exception("request failed: %s %s", request.method, request.path)
        return error_response(500, "internal error")


def _token_of(request: web.Request) -> str:
    auth = request.headers.get("Authorization", "")
    if auth.startswith("Bearer "):
        return auth[len("Bearer "):]
    return request.query.get("token") or request.cookies.get(TOKEN_COOKIE, "")


def token_auth(token: str) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path == "/healthz":
            return await handler(request)
        if not hmac.compare_digest(_token_of(request).encode(), token.encode()):
            return error_response(401, "a valid token is required (Authorization: Bearer <token>, or ?token=)",
                                  {"WWW-Authenticate": "Bearer"})
        response = await handler(request)
        # A page opened with ?token= keeps it in a cookie, so its <video> and <img> requests carry it too.
        if "token" in request.query and request.path == "/":
            response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="Strict", path="/")
        return response

    return check


def cors(origins: list[str]) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    @web.middleware
    async def allow(request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        allowed = origin is not None and ("*" in origins or origin in origins)
        if request.method == "OPTIONS" and allowed:
            response: web.StreamResponse = web.Response(status=204, headers={
                "Access-Control-Allow-Methods": "GET, OPTIONS",
                "Access-Control-Allow-Headers": "Authorization, Range",
                "Access-Control-Max-Age": "600",
            })
        else:
            response = await handler(request)
        if allowed:
            response.headers["Access-Control-Allow-Origin"] = origin or ""
            response.headers["Vary"] = "Origin"
        return response

    return allow


@web.middleware
async def no_sniff(request: web.Request, handler: Handler) -> web.StreamResponse:
    response = await handler(request)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    return response


def build_app(settings: ApiSettings, view: FleetView, proofs: ProofCache) -> web.Application:
    middlewares: list[Any] = [no_sniff, json_errors]
    if settings.api_cors_origins:
        middlewares.insert(0, cors(settings.api_cors_origins))
    token = settings.api_token.get_secret_value()
    if token:
        middlewares.append(token_auth(token))
    app = web.Application(middlewares=middlewares)
    app[VIEW], app[PROOFS], app[SETTINGS] = view, proofs, settings
    for route in ROUTES:
        app.router.add_get(route.path, route.handler)
    app.router.add_get("/", dashboard)
    app.router.add_get("/static/{name}", static_file)
    app.router.add_get("/healthz", healthz)
    return app
