"""The api's HTTP application: `/api/v1` (JSON, described by its OpenAPI document) and the dashboard page.

The route table below is the one place a route is declared: the aiohttp router and the OpenAPI document
are both built from it, so they cannot disagree.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

from aiohttp import web
from redis.exceptions import RedisError

from services.api import openapi
from services.api.auth import SESSION_COOKIE, FailedLogins, Sessions
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
from shared.secrets import scrub
from shared.storage import SeaweedStorage, StorageError

API = "/api/v1"
# Served files: a fixed table, so no part of a request ever becomes a file-system path.
_STATIC = {"app.js": "text/javascript", "style.css": "text/css"}
_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; media-src 'self'; object-src 'none'; "
    "frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
}

log = logging.getLogger("vigil.api")
access_log = logging.getLogger("vigil.api.access")
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


# Reachable without a session, besides the public routes of the table: probes and the login page.
_PUBLIC = frozenset({"/healthz", "/login", "/static/style.css"})
_NEEDS_TOKEN = "a valid token is required: Authorization: Bearer <token>, or a session from /login"


def _bearer(request: web.Request) -> str | None:
    auth = request.headers.get("Authorization")
    if auth is None:
        return None
    return auth[len("Bearer ") :] if auth.startswith("Bearer ") else ""


def _too_many(wait: float) -> web.Response:
    seconds = max(1, round(wait))
    return error_response(
        429, f"too many failed logins from this address; try again in {seconds} s", {"Retry-After": str(seconds)}
    )


def token_auth(
    token: str, sessions: Sessions, failures: FailedLogins, public: frozenset[str]
) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    """A bearer token (programs) or a session cookie (browsers); wrong tokens count against the client address."""

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in public:
            return await handler(request)
        client = request.remote or "unknown"
        if wait := failures.retry_after(client):
            return _too_many(wait)
        bearer = _bearer(request)
        if bearer is not None:
            if hmac.compare_digest(bearer.encode(), token.encode()):
                return await handler(request)
            failures.fail(client)
            log.warning("wrong token from %s for %s %s", client, request.method, request.path)
        elif sessions.valid(request.cookies.get(SESSION_COOKIE, "")):
            return await handler(request)
        elif request.path == "/":
            raise web.HTTPSeeOther("/login")  # a person: the login page, not a JSON error
        return error_response(401, _NEEDS_TOKEN, {"WWW-Authenticate": "Bearer"})

    return check


def login_routes(app: web.Application, token: str, sessions: Sessions, failures: FailedLogins, secure: bool) -> None:
    """GET /login: a form; POST /login: the token in, a session cookie out (never the token); POST /logout."""

    async def page(request: web.Request) -> web.Response:
        return _login_page()

    async def log_in(request: web.Request) -> web.StreamResponse:
        client = request.remote or "unknown"
        if wait := failures.retry_after(client):
            return _too_many(wait)
        given = (await request.post()).get("token", "")
        if not isinstance(given, str) or not hmac.compare_digest(given.encode(), token.encode()):
            failures.fail(client)
            log.warning("failed login from %s", client)
            return _login_page("That token is not right.", 401)
        response = web.Response(status=303, headers={"Location": "/"})
        response.set_cookie(
            SESSION_COOKIE,
            sessions.issue(),
            max_age=int(sessions.lifetime),
            httponly=True,
            samesite="Strict",
            secure=secure or request.secure,
            path="/",
        )
        return response

    async def log_out(request: web.Request) -> web.StreamResponse:
        response = web.Response(status=303, headers={"Location": "/login"})
        response.del_cookie(SESSION_COOKIE, path="/")
        return response

    app.router.add_get("/login", page)
    app.router.add_post("/login", log_in)
    app.router.add_post("/logout", log_out)


def _login_page(message: str = "", status: int = 200) -> web.Response:
    note = f'<p role="alert">{message}</p>' if message else ""  # a fixed text of ours, never the request's
    body = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Vigil: log in</title>'
        '<link rel="stylesheet" href="/static/style.css"></head><body><main><h1>Vigil</h1>'
        f'{note}<form method="post" action="/login"><label>Token <input type="password" name="token" '
        'autocomplete="current-password" required autofocus></label> <button type="submit">Log in</button>'
        "</form></main></body></html>"
    )
    return web.Response(status=status, text=body, content_type="text/html", headers=_PAGE_HEADERS)


# Query parameters whose values are never logged, whatever route they come with.
_SECRET_PARAM = re.compile(r"([?&](?:[^=&]*(?:token|password|secret|key)[^=&]*)=)[^&]*", re.IGNORECASE)


@web.middleware
async def log_access(request: web.Request, handler: Handler) -> web.StreamResponse:
    """One line per request: method, path (secret query values masked), status, milliseconds, client."""
    started = time.perf_counter()
    status = 500  # unless the handler answers
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:  # redirects raised by handlers
        status = exc.status
        raise
    finally:
        target = scrub(_SECRET_PARAM.sub(r"\1***", request.rel_url.raw_path_qs))
        ms = (time.perf_counter() - started) * 1000
        access_log.info("%s %s %d %.1f ms %s", request.method, target, status, ms, request.remote or "-")


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
    middlewares: list[Any] = [log_access, no_sniff, json_errors]
    if settings.api_cors_origins:
        middlewares.insert(1, cors(settings.api_cors_origins))
    token = settings.api_token.get_secret_value()
    sessions = Sessions(token, settings.api_session_hours * 3600)
    failures = FailedLogins(settings.api_login_failures)
    if token:
        public = _PUBLIC | {route.path for route in routes(settings.api_page_limit) if route.public}
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
