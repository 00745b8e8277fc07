"""The api's request handlers: each reads what the route's models validated (in request[QUERY], [PATH] and
[HEADERS]) and answers from the fleet's view and the proof storage."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

from aiohttp import web

from services.api.errors import ApiError, not_found
from services.api.models import INTERNAL_FIELDS, EventPage, PublicEvent, Services, SourceLayout, Sources, Totals, dump
from services.api.params import (
    ClipHeaders,
    EventPath,
    EventsQuery,
    Headers,
    KeyframeQuery,
    Params,
    SourcePath,
)
from services.api.queries import Cursor, EventFilter, FleetView
from services.api.ranges import UnsatisfiableRange, parse_range
from services.api.settings import ApiSettings
from shared.contracts import Event
from shared.storage import SeaweedStorage

API = "/api/v1"
# Served files: a fixed table, so no part of a request ever becomes a file-system path.
_STATIC = {"app.js": "text/javascript", "style.css": "text/css"}
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; media-src 'self'; object-src 'none'; "
    "frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
QUERY = web.RequestKey("query", Params)
PATH = web.RequestKey("path", Params)
HEADERS = web.RequestKey("headers", Headers)
VIEW = web.AppKey("view", FleetView)
DOCUMENT = web.AppKey("document", dict)
STORAGE = web.AppKey("storage", SeaweedStorage)
SETTINGS = web.AppKey("settings", ApiSettings)


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


async def list_events(request: web.Request) -> web.Response:
    q = request[QUERY]
    assert isinstance(q, EventsQuery)
    # since after until is an empty range, not an error: the document allows any two times.
    # The cursor's pattern is the shape Cursor.encode writes, so one that matches it decodes.
    cursor = Cursor.decode(q.cursor) if q.cursor else None
    where = EventFilter(
        source_id=q.source,
        label=q.label,
        state=q.state,
        since=q.since,
        until=q.until,
        zone=q.zone,
        sub_label=q.sub_label,
        stationary=q.stationary,
    )
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


async def get_source_layout(request: web.Request) -> web.Response:
    """What the dashboard draws a source's zones and lines with. A source id the settings do not name and no event
    has is a 404: a mistyped id should not look like a source without zones."""
    path = request[PATH]
    assert isinstance(path, SourcePath)
    configured = request.app[SETTINGS].zones.get(path.source_id)
    newest = await _view(request).newest_with_keyframe(path.source_id)
    if configured is None and newest is None and not await _view(request).has_source(path.source_id):
        raise not_found(f"no source {path.source_id!r}: no zones are configured for it and it has no events")
    frame = None
    if newest is not None:
        frame = {"event_id": newest.id, "start_wall": newest.start_wall, "keyframe": f"{API}/events/{newest.id}/keyframe"}
    return _json(
        dump(
            SourceLayout,
            {
                "source_id": path.source_id,
                "zones": {name: zone.points for name, zone in configured.zones.items()} if configured else {},
                "lines": {name: line.model_dump() for name, line in configured.lines.items()} if configured else {},
                "frame": frame,
            },
        )
    )


async def get_totals(request: web.Request) -> web.Response:
    return _json(dump(Totals, {"sources": await _view(request).totals()}))


async def get_openapi(request: web.Request) -> web.Response:
    return _json(request.app[DOCUMENT])


async def dashboard(request: web.Request) -> web.Response:
    return web.Response(text=_asset("index.html"), content_type="text/html", headers=PAGE_HEADERS)


async def static_file(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in _STATIC:
        raise not_found(f"no file {name!r}")
    return web.Response(text=_asset(name), content_type=_STATIC[name], headers={"Cache-Control": "no-cache"})


async def healthz(request: web.Request) -> web.Response:
    return _json({"ok": True, "service": "api"})


def _asset(name: str) -> str:
    return resources.files("services.api").joinpath("static", name).read_text(encoding="utf-8")
