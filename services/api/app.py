"""The api's HTTP application: `/api/v1` (JSON, described by its OpenAPI document) and the dashboard page.

The route table below is the one place a route is declared: the aiohttp router and the OpenAPI document
are both built from it, so they cannot disagree. The handlers are in handlers.py, the middlewares every
request passes in middleware.py, access control in access.py (its rules in auth.py), and the document's
builder in openapi.py.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from services.api import openapi
from services.api.access import PUBLIC_PATHS, login_routes, token_auth
from services.api.auth import FailedLogins, Sessions
from services.api.handlers import (
    API,
    DOCUMENT,
    HEADERS,
    PATH,
    QUERY,
    SETTINGS,
    STORAGE,
    VIEW,
    Handler,
    dashboard,
    get_clip,
    get_event,
    get_keyframe,
    get_openapi,
    get_source_layout,
    get_totals,
    healthz,
    list_events,
    list_services,
    list_sources,
    static_file,
)
from services.api.middleware import cors, json_errors, log_access, no_sniff
from services.api.models import EventPage, OpenApiDocument, PublicEvent, Services, SourceLayout, Sources, Totals
from services.api.openapi import Link, Route
from services.api.params import (
    ClipHeaders,
    EventPath,
    KeyframeQuery,
    SourcePath,
    events_query,
    parse_headers,
    parse_query,
)
from services.api.queries import FleetView
from services.api.settings import ApiSettings
from shared.storage import SeaweedStorage

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
            f"{API}/sources/{{source_id}}/layout",
            get_source_layout,
            "A source's zones and lines (fractions of the frame), and its newest key frame to draw them on",
            {"200": "the layout", "404": "a source with no zones configured and no events", "503": _UNAVAILABLE},
            SourceLayout,
            path_params=SourcePath,
        ),
        Route(
            f"{API}/totals",
            get_totals,
            "Frames read, routed, inferred and dropped, and events, per source and model",
            {"200": "counts per source", "503": _UNAVAILABLE},
            Totals,
        ),
        Route(
            f"{API}/openapi.json", get_openapi, "This document", {"200": "the OpenAPI 3.1 document"}, OpenApiDocument, public=True
        ),
    )


def openapi_document(settings: ApiSettings) -> dict[str, Any]:
    return openapi.document(routes(settings.api_page_limit), token=bool(settings.api_token.get_secret_value()))


def _validating(route: Route) -> Handler:
    """The route's handler, after its parameters are read by the route's own models (400 otherwise)."""

    async def handle(request: web.Request) -> web.StreamResponse:
        request[QUERY] = parse_query(route.query, request.query)
        if route.path_params is not None:
            request[PATH] = parse_query(route.path_params, request.match_info, "path")
        request[HEADERS] = parse_headers(route.headers, request.headers)
        return await route.handler(request)

    return handle


def build_app(settings: ApiSettings, view: FleetView, storage: SeaweedStorage) -> web.Application:
    middlewares: list[Any] = [log_access, no_sniff, json_errors]
    if settings.api_cors_origins:
        middlewares.insert(1, cors(settings.api_cors_origins))
    token = settings.api_token.get_secret_value()
    sessions = Sessions(token, settings.api_session_hours * 3600)
    failures = FailedLogins(settings.api_login_failures)
    if token:
        public = PUBLIC_PATHS | {route.path for route in routes(settings.api_page_limit) if route.public}
        middlewares.append(token_auth(token, sessions, failures, public))
    app = web.Application(middlewares=middlewares)
    if token:
        login_routes(app, token, sessions, failures, settings.api_cookie_secure)
    app[VIEW], app[STORAGE], app[SETTINGS] = view, storage, settings
    app[DOCUMENT] = openapi_document(settings)
    for route in routes(settings.api_page_limit):
        app.router.add_get(route.path, _validating(route))
    app.router.add_get("/", dashboard)
    app.router.add_get("/static/{name}", static_file)
    app.router.add_get("/healthz", healthz)
    return app
