"""The api's HTTP application: `/api/v1` (JSON, described by its OpenAPI document) and the dashboard page.

The route table below is the one place a route is declared: the aiohttp router and the OpenAPI document
are both built from it, so they cannot disagree.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

from aiohttp import web
from multidict import MultiDict
from redis.exceptions import RedisError

from services.api import openapi
from services.api.errors import ApiError, error_response, not_found
from services.api.models import INTERNAL_FIELDS, EventPage, OpenApiDocument, PublicEvent, Services, Sources, Totals, dump
from services.api.openapi import Link, Route
from services.api.params import (
    ClipHeaders,
    EventPath,
    EventsQuery,
    Headers,
    KeyframeQuery,
    Params,
    events_query,
    parse_headers,
    parse_query,
)
from services.api.queries import Cursor, EventFilter, FleetView
from services.api.ranges import UnsatisfiableRange, parse_range
from services.api.settings import ApiSettings
from shared.contracts import Event
from shared.storage import SeaweedStorage, StorageError

API = "/api/v1"
TOKEN_COOKIE = "vigil_token"
# Served files: a fixed table, so no part of a request ever becomes a file-system path.
_STATIC = {"app.js": "text/javascript", "style.css": "text/css"}
_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; media-src 'self'; object-src 'none'; "
    "frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
}

log = logging.getLogger("vigil.api")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
QUERY = web.RequestKey("query", Params)
PATH = web.RequestKey("path", Params)
HEADERS = web.RequestKey("headers", Headers)


# ---------------------------------------------------------------- helpers


def _view(request: web.Request) -> FleetView:
    return request.app[VIEW]


def _json(doc: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, text=json.dumps(doc), content_type="application/json")


def public_event(event: Event) -> dict[str, Any]:
    doc = event.model_dump(mode="json", exclude=set(INTERNAL_FIELDS))
    base = f"{API}/events/{event.id}"
    doc["links"] = {
        "self": base,
        "clip": f"{base}/clip" if event.video_proofs else None,
        "keyframe": f"{base}/keyframe" if event.image_proofs else None,
        "keyframe_annotated": f"{base}/keyframe?annotated=true" if event.image_annotated_proofs else None,
    }
    return doc


async def _event_or_404(request: web.Request) -> Event:
    path = request[PATH]
    assert isinstance(path, EventPath)
    event = await _view(request).event(path.event_id)
    if event is None:
        raise not_found(f"no event {path.event_id}")
    return event


# ---------------------------------------------------------------- handlers


async def list_events(request: web.Request) -> web.Response:
    q = request[QUERY]
    assert isinstance(q, EventsQuery)
    # since after until is an empty range, not an error: the document allows any two times.
    # The cursor's pattern is the shape Cursor.encode writes, so one that matches it decodes.
    cursor = Cursor.decode(q.cursor) if q.cursor else None
    where = EventFilter(source_id=q.source, label=q.label, state=q.state, since=q.since, until=q.until)
    page = await _view(request).events(where, q.limit, cursor)
    return _json(
        dump(
            EventPage,
            {
                "events": [public_event(e) for e in page.events],
                "next_cursor": page.next_cursor.encode() if page.next_cursor else None,
            },
        )
    )


async def get_event(request: web.Request) -> web.Response:
    return _json(dump(PublicEvent, public_event(await _event_or_404(request))))


async def get_clip(request: web.Request) -> web.StreamResponse:
    """Streamed from the filer, a range passed on as a range: the api never holds a clip, and a browser seeking
    costs what it reads, not the whole file each time."""
    event = await _event_or_404(request)
    if not event.video_proofs:
        raise not_found(f"event {event.id} has no clip (state {event.state.value})")
    storage, cap = request.app[STORAGE], request.app[SETTINGS].api_clip_max_mb * 1024 * 1024
    size = await storage.size(event.video_proofs)
    if size > cap:
        raise ApiError(502, f"the clip is {size / 2**20:.1f} MiB, over api_clip_max_mb ({cap / 2**20:g} MiB)")
    wanted_header = request[HEADERS]
    assert isinstance(wanted_header, ClipHeaders)
    try:
        wanted = parse_range(wanted_header.range, size)
    except UnsatisfiableRange as exc:
        raise ApiError(416, str(exc), {"Content-Range": f"bytes */{size}"}) from None
    response = web.StreamResponse(
        status=206 if wanted else 200, headers={"Accept-Ranges": "bytes", "Cache-Control": "private, max-age=3600"}
    )
    response.content_type = "video/mp4"
    if wanted is None:
        response.content_length = size
    else:
        response.content_length = wanted[1] - wanted[0] + 1
        response.headers["Content-Range"] = f"bytes {wanted[0]}-{wanted[1]}/{size}"
    async with storage.stream(event.video_proofs, wanted) as chunks:
        await response.prepare(request)
        async for chunk in chunks:
            await response.write(chunk)
    await response.write_eof()
    return response


async def get_keyframe(request: web.Request) -> web.Response:
    event = await _event_or_404(request)
    q = request[QUERY]
    assert isinstance(q, KeyframeQuery)
    url = event.image_annotated_proofs if q.annotated else event.image_proofs
    if not url:
        raise not_found(f"event {event.id} has no key frame (state {event.state.value})")
    data = await request.app[STORAGE].download(url)  # a JPEG: small, and capped by download_max_mb
    return web.Response(body=data, content_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})


async def list_services(request: web.Request) -> web.Response:
    return _json(dump(Services, {"models": await _view(request).workers()}))


async def list_sources(request: web.Request) -> web.Response:
    return _json(dump(Sources, {"sources": await _view(request).sources()}))


async def get_totals(request: web.Request) -> web.Response:
    return _json(dump(Totals, {"sources": await _view(request).totals()}))


async def get_openapi(request: web.Request) -> web.Response:
    return _json(request.app[DOCUMENT])


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

_UNAVAILABLE = "the event store or the proof storage is unavailable; try again"


def routes(page_limit: int) -> tuple[Route, ...]:
    """The one place a route is declared: the aiohttp router, the request validation and the OpenAPI
    document are all built from it, so they cannot disagree."""
    to_event = (
        Link("get_event", "event_id", "$response.body#/id"),
        Link("get_clip", "event_id", "$response.body#/id"),
        Link("get_keyframe", "event_id", "$response.body#/id"),
    )
    newest = tuple(Link(link.operation, link.parameter, "$response.body#/events/0/id") for link in to_event)
    return (
        Route(
            f"{API}/events",
            list_events,
            "Events, newest first, filtered and paged",
            {"200": "a page of events", "400": "a bad or unknown parameter", "503": _UNAVAILABLE},
            EventPage,
            query=events_query(page_limit),
            links=newest,
        ),
        Route(
            f"{API}/events/{{event_id}}",
            get_event,
            "One event",
            {"200": "the event", "404": "no such event", "503": _UNAVAILABLE},
            PublicEvent,
            path_params=EventPath,
            links=to_event[1:],
        ),
        Route(
            f"{API}/events/{{event_id}}/clip",
            get_clip,
            "The event's MP4 proof clip (H.264); Range requests allowed",
            {
                "200": "the clip",
                "206": "one range of the clip",
                "404": "no such event, or no clip yet",
                "416": "a range outside the clip",
                "502": "the stored clip is larger than api_clip_max_mb",
                "503": _UNAVAILABLE,
            },
            content_type="video/mp4",
            path_params=EventPath,
            headers=ClipHeaders,
            response_headers={
                "206": {"Content-Range": "the range sent, and the clip's size"},
                "416": {"Content-Range": "the clip's size: bytes */<size>"},
            },
        ),
        Route(
            f"{API}/events/{{event_id}}/keyframe",
            get_keyframe,
            "The event's key frame",
            {"200": "the JPEG", "404": "no such event, or no key frame yet", "503": _UNAVAILABLE},
            content_type="image/jpeg",
            query=KeyframeQuery,
            path_params=EventPath,
        ),
        Route(
            f"{API}/services",
            list_services,
            "Live model workers, from their heartbeats",
            {"200": "live instances per model", "503": _UNAVAILABLE},
            Services,
        ),
        Route(
            f"{API}/sources",
            list_sources,
            "Sources with their state, fps and drops",
            {"200": "every source the fleet reports", "503": _UNAVAILABLE},
            Sources,
        ),
        Route(
            f"{API}/totals",
            get_totals,
            "Frames read, routed, inferred and dropped, and events, per source and model",
            {"200": "counts per source", "503": _UNAVAILABLE},
            Totals,
        ),
        Route(f"{API}/openapi.json", get_openapi, "This document", {"200": "the OpenAPI 3.1 document"}, OpenApiDocument),
    )


def openapi_document(settings: ApiSettings) -> dict[str, Any]:
    return openapi.document(routes(settings.api_page_limit), token=bool(settings.api_token.get_secret_value()))


def _validating(route: Route, token: bool) -> Handler:
    """The route's handler, after its parameters are read by the route's own models (400 otherwise)."""

    async def handle(request: web.Request) -> web.StreamResponse:
        query = request.query
        if token and "token" in query:  # the token scheme's parameter, already checked by token_auth
            query = MultiDict((k, v) for k, v in query.items() if k != "token")
        request[QUERY] = parse_query(route.query, query)
        if route.path_params is not None:
            request[PATH] = parse_query(route.path_params, request.match_info, "path")
        request[HEADERS] = parse_headers(route.headers, request.headers)
        return await route.handler(request)

    return handle


# ---------------------------------------------------------------- middlewares and assembly

VIEW = web.AppKey("view", FleetView)
DOCUMENT = web.AppKey("document", dict)
STORAGE = web.AppKey("storage", SeaweedStorage)
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
        # A 405 must say what is allowed (RFC 9110 §15.5.6); aiohttp puts it in the exception's headers.
        allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return error_response(exc.status, exc.reason, allow)
    except StorageError as exc:
        log.warning("proof unavailable: %s", exc)
        return error_response(503, "the proof storage is unavailable; try again")
    except RedisError as exc:
        log.warning("event store unavailable: %s", exc)
        return error_response(503, "the event store is unavailable; try again")
    except Exception:  # one bad request must not take the api down
        log.exception("request failed: %s %s", request.method, request.path)
        return error_response(500, "internal error")


def _token_of(request: web.Request) -> str:
    auth = request.headers.get("Authorization", "")
    if auth.startswith("Bearer "):
        return auth[len("Bearer ") :]
    return request.query.get("token") or request.cookies.get(TOKEN_COOKIE, "")


def token_auth(token: str) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path == "/healthz":
            return await handler(request)
        if not hmac.compare_digest(_token_of(request).encode(), token.encode()):
            return error_response(
                401, "a valid token is required (Authorization: Bearer <token>, or ?token=)", {"WWW-Authenticate": "Bearer"}
            )
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
            response: web.StreamResponse = web.Response(
                status=204,
                headers={
                    "Access-Control-Allow-Methods": "GET, OPTIONS",
                    "Access-Control-Allow-Headers": "Authorization, Range",
                    "Access-Control-Max-Age": "600",
                },
            )
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


def build_app(settings: ApiSettings, view: FleetView, storage: SeaweedStorage) -> web.Application:
    middlewares: list[Any] = [no_sniff, json_errors]
    if settings.api_cors_origins:
        middlewares.insert(0, cors(settings.api_cors_origins))
    token = settings.api_token.get_secret_value()
    if token:
        middlewares.append(token_auth(token))
    app = web.Application(middlewares=middlewares)
    app[VIEW], app[STORAGE], app[SETTINGS] = view, storage, settings
    app[DOCUMENT] = openapi_document(settings)
    for route in routes(settings.api_page_limit):
        app.router.add_get(route.path, _validating(route, bool(token)))
    app.router.add_get("/", dashboard)
    app.router.add_get("/static/{name}", static_file)
    app.router.add_get("/healthz", healthz)
    return app
