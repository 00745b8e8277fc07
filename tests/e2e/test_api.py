"""The api against real Redis and SeaweedFS holding the events the fleet produced from the sample video."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import secrets
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import cv2
import numpy as np
import pytest

from fleet.clients import redis_client
from fleet.servers import ServerSet
from services.api.app import routes
from services.api.handlers import public_event
from services.api.service import ApiService
from services.registrator.events import EventRules, EventTracker
from services.registrator.proofs import remote_folder
from shared.contracts import EVENT_ID_PATTERN, BBox, Detection, Event, EventState, FrameRef, InferenceResult, ModelKind
from shared.event_store import EventStore
from shared.jpeg import encode_jpeg
from shared.keys import RedisKeys
from shared.settings import VigilSettings
from shared.storage import SeaweedStorage
from tests.e2e.conftest import SAMPLE_ZONES, SampleRun, api_service
from tests.integration.helpers import running
from tests.support.noop_worker import NoopSettings, NoopWorker
from tests.support.settings import settings_from

pytestmark = pytest.mark.timeout(400)  # the first test to ask for sample_run waits for the fleet's run


async def get_json(http: aiohttp.ClientSession, url: str, status: int = 200) -> Any:
    async with http.get(url) as resp:
        assert resp.status == status, await resp.text()
        assert resp.content_type == "application/json"
        return await resp.json()


async def test_events_are_listed_newest_first_filtered_and_paged(api: str, sample_run: SampleRun) -> None:
    stored = sorted(sample_run.report.events, key=lambda e: (e.start_wall, e.id), reverse=True)
    assert len(stored) >= 3
    async with aiohttp.ClientSession() as http:
        page = await get_json(http, f"{api}/api/v1/events")
        assert [e["id"] for e in page["events"]] == [e.id for e in stored] and page["next_cursor"] is None
        first = page["events"][0]
        assert "video_proof_path" not in first and "video_proofs" not in first  # nothing of the server's insides
        assert first["links"]["clip"] == f"/api/v1/events/{first['id']}/clip"

        walked: list[str] = []  # two at a time, following the cursor
        url = f"{api}/api/v1/events?limit=2"
        while True:
            page = await get_json(http, url)
            assert len(page["events"]) <= 2
            walked += [e["id"] for e in page["events"]]
            if page["next_cursor"] is None:
                break
            url = f"{api}/api/v1/events?limit=2&cursor={page['next_cursor']}"
        assert walked == [e.id for e in stored]

        finished = [e.id for e in stored if e.state is EventState.FINISHED]
        assert [e["id"] for e in (await get_json(http, f"{api}/api/v1/events?state=FINISHED"))["events"]] == finished
        assert len((await get_json(http, f"{api}/api/v1/events?label=person&source=cam0"))["events"]) == len(stored)
        assert (await get_json(http, f"{api}/api/v1/events?source=elsewhere"))["events"] == []
        assert (await get_json(http, f"{api}/api/v1/events?label=giraffe"))["events"] == []
        middle = stored[len(stored) // 2]
        since = await get_json(http, f"{api}/api/v1/events?since={middle.start_wall!r}")
        assert [e["id"] for e in since["events"]] == [e.id for e in stored if e.start_wall >= middle.start_wall]
        until = await get_json(http, f"{api}/api/v1/events?until={middle.start_wall!r}")
        assert [e["id"] for e in until["events"]] == [e.id for e in stored if e.start_wall <= middle.start_wall]

        one = await get_json(http, f"{api}/api/v1/events/{middle.id}")
        assert one == public_event(middle)


async def ids_of(http: aiohttp.ClientSession, url: str) -> list[str]:
    """Every event the listing gives at `url`, following its cursor."""
    found: list[str] = []
    cursor = ""
    while True:
        page = await get_json(http, f"{url}&limit=7{cursor}")
        found += [e["id"] for e in page["events"]]
        if page["next_cursor"] is None:
            return found
        cursor = f"&cursor={page['next_cursor']}"


async def test_events_are_filtered_by_zone_sub_label_and_stationary(api: str, sample_run: SampleRun) -> None:
    stored = sorted(sample_run.report.events, key=lambda e: (e.start_wall, e.id), reverse=True)
    async with aiohttp.ClientSession() as http:
        for zone in SAMPLE_ZONES["cam0"]["zones"]:
            wanted = [e.id for e in stored if zone in e.zones]
            assert wanted and len(wanted) < len(stored), zone  # the sample's people enter some zones, not all
            assert await ids_of(http, f"{api}/api/v1/events?zone={zone}") == wanted
        # With another filter: the narrower index walked, the other checked per id.
        assert await ids_of(http, f"{api}/api/v1/events?zone=east_path&state=FINISHED") == [
            e.id for e in stored if "east_path" in e.zones and e.state is EventState.FINISHED
        ]
        assert await ids_of(http, f"{api}/api/v1/events?zone=nowhere") == []
        for flag in (True, False):
            wanted = [e.id for e in stored if e.stationary is flag]
            assert await ids_of(http, f"{api}/api/v1/events?stationary={str(flag).lower()}") == wanted
        for sub_label in {e.sub_label for e in stored if e.sub_label} or {"cab"}:  # none without the cascade
            wanted = [e.id for e in stored if e.sub_label == sub_label]
            assert await ids_of(http, f"{api}/api/v1/events?sub_label={sub_label}") == wanted


async def test_a_source_layout_has_its_zones_lines_and_newest_key_frame(api: str, sample_run: SampleRun) -> None:
    configured = SAMPLE_ZONES["cam0"]
    with_frame = [e for e in sample_run.report.events if e.image_proofs]
    newest = max(with_frame, key=lambda e: (e.start_wall, e.id))
    async with aiohttp.ClientSession() as http:
        layout = await get_json(http, f"{api}/api/v1/sources/cam0/layout")
        assert layout["zones"] == {name: zone["points"] for name, zone in configured["zones"].items()}
        assert layout["lines"] == configured["lines"]
        assert layout["frame"] == {
            "event_id": newest.id,
            "start_wall": newest.start_wall,
            "keyframe": f"/api/v1/events/{newest.id}/keyframe",
        }
        async with http.get(f"{api}{layout['frame']['keyframe']}") as resp:
            assert resp.status == 200 and resp.content_type == "image/jpeg"
        missing = await get_json(http, f"{api}/api/v1/sources/cam9/layout", status=404)
        assert "no source 'cam9'" in missing["error"]["message"]
        await get_json(http, f"{api}/api/v1/sources/a.b/layout", status=400)


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("limit=0", "limit: Input should be greater than or equal to 1"),
        ("limit=201", "limit: Input should be less than or equal to 200"),
        ("limit=ten", "limit='ten': must be an integer"),
        ("limit=05", "limit='05': must be an integer"),
        ("state=LOST", "state='LOST': Input should be 'CREATED'"),
        ("state=finished", "state='finished': Input should be 'CREATED'"),
        ("state=", "state='': Input should be 'CREATED'"),
        ("since=yesterday", "neither unix seconds, an RFC 3339 date-time nor a date"),
        ("since=nan", "since='nan': is neither unix seconds"),  # once a 500
        ("until=inf", "until='inf': is neither unix seconds"),
        ("since=2030-02-30", "is not a valid date or time"),
        ("source=", "source='': String should match pattern"),
        ("zone=a:b", "zone='a:b': String should match pattern"),
        ("sub_label=", "sub_label='': String should have at least 1 character"),
        ("stationary=1", "stationary='1': must be true or false"),
        ("cursor=abc", "cursor='abc': String should match pattern"),
        ("colour=red", "unknown query parameter 'colour'"),
        ("limit=1&limit=2", "query parameter 'limit' is given more than once"),
    ],
)
async def test_bad_parameters_get_400_with_a_clear_message(api: str, query: str, message: str) -> None:
    async with aiohttp.ClientSession() as http:
        body = await get_json(http, f"{api}/api/v1/events?{query}", status=400)
    assert message in body["error"]["message"] and body["error"]["status"] == 400


@pytest.mark.parametrize(
    ("query", "everything"),
    [
        ("since=2030-01-02&until=2030-01-01", False),  # an empty range: valid, and nothing in it
        ("since=1e400", False),  # a JSON number past a double's range: an unbounded end
        ("until=-1e400", False),
        ("since=0001-01-01T00:00:00-23:59&until=9999-12-31T23:59:60.123456789Z", True),  # RFC 3339's far edges
    ],
)
async def test_every_time_the_document_allows_is_accepted(
    api: str,
    sample_run: SampleRun,
    query: str,
    everything: bool,
) -> None:
    async with aiohttp.ClientSession() as http:
        page = await get_json(http, f"{api}/api/v1/events?{query}")
    assert len(page["events"]) == (len(sample_run.report.events) if everything else 0)


async def test_time_filters_read_dates_and_date_times_as_utc(api: str, sample_run: SampleRun) -> None:
    stored = sorted(sample_run.report.events, key=lambda e: (e.start_wall, e.id), reverse=True)
    second = int(min(e.start_wall for e in stored))  # whole seconds: a date-time that is not rounded up
    when = datetime.fromtimestamp(second, UTC)
    async with aiohttp.ClientSession() as http:
        by_day = await get_json(http, f"{api}/api/v1/events?since={when.date().isoformat()}")
        by_time = await get_json(http, f"{api}/api/v1/events?since={when.strftime('%Y-%m-%dT%H:%M:%SZ')}")
        after = await get_json(http, f"{api}/api/v1/events?since={when.strftime('%Y-%m-%dT%H:%M:%S-01:00')}")
    assert [e["id"] for e in by_day["events"]] == [e.id for e in stored]
    assert [e["id"] for e in by_time["events"]] == [e.id for e in stored]
    assert after["events"] == []  # an hour later in UTC than any event


async def test_undeclared_methods_get_405_with_allow(api: str) -> None:
    async with aiohttp.ClientSession() as http:
        for method in ("TRACE", "POST", "DELETE"):
            async with http.request(method, f"{api}/api/v1/events") as resp:
                assert resp.status == 405 and resp.headers["Allow"] == "GET,HEAD", method
                assert (await resp.json())["error"]["status"] == 405


async def test_unknown_ids_and_paths_get_json_404s(api: str) -> None:
    async with aiohttp.ClientSession() as http:
        assert "no event" in (await get_json(http, f"{api}/api/v1/events/cam0-person-000000000000", 404))["error"]["message"]
        await get_json(http, f"{api}/api/v1/events/cam0-person-000000000000/clip", 404)
        await get_json(http, f"{api}/api/v1/nothing-here", 404)
        await get_json(http, f"{api}/static/settings.py", 404)


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/events/..%2F..%2F..%2Fetc%2Fpasswd/clip",
        "/api/v1/events/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "/static/..%2F..%2Fapi%2Fapp.py",
        "/static/%2e%2e/%2e%2e/shared/settings.py",
        "/api/v1/events/x/keyframe?annotated=../../../etc/passwd",
    ],
)
async def test_path_traversal_is_refused(api: str, path: str) -> None:
    async with aiohttp.ClientSession() as http, http.get(api + path) as resp:
        body = await resp.read()
    assert resp.status in (400, 404), (resp.status, body[:200])
    assert b"root:" not in body and b"import" not in body


async def test_clip_serves_range_requests(api: str, sample_run: SampleRun) -> None:
    event = next(e for e in sample_run.report.events if e.state is EventState.FINISHED)
    clip = Path(event.video_proof_path or "").read_bytes()
    size = len(clip)
    url = f"{api}/api/v1/events/{event.id}/clip"
    async with aiohttp.ClientSession() as http:
        async with http.get(url) as resp:
            assert resp.status == 200 and resp.headers["Accept-Ranges"] == "bytes"
            assert resp.content_type == "video/mp4" and await resp.read() == clip
        for header, first, last in [
            ("bytes=0-99", 0, 99),
            (f"bytes=100-{size + 50}", 100, size - 1),
            ("bytes=1000-", 1000, size - 1),
            ("bytes=-500", size - 500, size - 1),
        ]:
            async with http.get(url, headers={"Range": header}) as resp:
                assert resp.status == 206, header
                assert resp.headers["Content-Range"] == f"bytes {first}-{last}/{size}"
                assert await resp.read() == clip[first : last + 1]
        for header in (f"bytes={size}-", "bytes=50-10"):
            async with http.get(url, headers={"Range": header}) as resp:
                assert resp.status == 416, header
                assert resp.headers["Content-Range"] == f"bytes */{size}"
        async with http.get(url, headers={"Range": "lines=0-5"}) as resp:  # not the document's Range
            assert resp.status == 400 and "Range='lines=0-5'" in (await resp.json())["error"]["message"]
        async with http.get(url, headers={"Range": "bytes=0-9, 20-29"}) as resp:  # several: the whole clip
            assert resp.status == 200 and await resp.read() == clip


async def test_keyframe_raw_and_annotated(api: str, sample_run: SampleRun) -> None:
    event = next(e for e in sample_run.report.events if e.state is EventState.FINISHED)
    raw_file = Path(event.image_proof_path or "").read_bytes()
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{api}/api/v1/events/{event.id}/keyframe") as resp:
            assert resp.status == 200 and resp.content_type == "image/jpeg"
            raw = await resp.read()
        async with http.get(f"{api}/api/v1/events/{event.id}/keyframe?annotated=true") as resp:
            assert resp.status == 200
            annotated = await resp.read()
        await get_json(http, f"{api}/api/v1/events/{event.id}/keyframe?annotated=maybe", 400)
    assert raw == raw_file
    a, b = (cv2.imdecode(np.frombuffer(x, np.uint8), cv2.IMREAD_COLOR) for x in (raw, annotated))
    assert a.shape == b.shape == (576, 768, 3)
    assert np.abs(a.astype(int) - b.astype(int)).max() > 100  # the boxes are drawn


async def test_sources_totals_and_live_workers(api: str, servers: ServerSet, sample_run: SampleRun) -> None:
    drained = sample_run.report.drained["cam0"]
    async with aiohttp.ClientSession() as http:
        sources = (await get_json(http, f"{api}/api/v1/sources"))["sources"]
        assert [(s["source_id"], s["state"], s["frames_read"]) for s in sources] == [("cam0", "ended", 398)]
        totals = (await get_json(http, f"{api}/api/v1/totals"))["sources"]["cam0"]
        assert totals["frames_read"] == 398 and totals["frames_dropped"] == 0
        assert totals["frames_routed"] == drained.frames_routed == 398
        # A file waits for its models: none of its frames is shed.
        assert {m: (t["routed"], t["shed"], t["inferred"], t["errors"]) for m, t in totals["models"].items()} == {
            m: (n, 0, drained.results[m], 0) for m, n in drained.tasks.items()
        }
        assert totals["events"] == len(sample_run.report.events)

        assert (await get_json(http, f"{api}/api/v1/services"))["models"] == {}  # the fleet has stopped
        settings = settings_from(NoopSettings, servers.env(), subject_prefix=sample_run.prefix, instance="noop-1")
        async with running(NoopWorker(settings)):
            found: dict[str, Any] = {}
            deadline = time.monotonic() + 30
            while not found and time.monotonic() < deadline:  # the worker beats once at start; the api reads it at once
                found = (await get_json(http, f"{api}/api/v1/services"))["models"]
                await asyncio.sleep(0.1)
            assert [(hb["instance"], hb["kind"]) for hb in found["noop"]] == [("noop-1", "detection")]


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if "$ref" in node else []
        return own + [r for v in node.values() for r in _refs(v)]
    return [r for v in node for r in _refs(v)] if isinstance(node, list) else []


async def test_openapi_document_describes_every_route(api: str) -> None:
    async with aiohttp.ClientSession() as http:
        doc = await get_json(http, f"{api}/api/v1/openapi.json")
    assert doc["openapi"] == "3.1.0" and "security" not in doc  # no token configured, so none asked for
    assert set(doc["paths"]) == {r.path for r in routes(200)}
    clip = doc["paths"]["/api/v1/events/{event_id}/clip"]["get"]
    assert set(clip["responses"]) == {"200", "206", "400", "404", "416", "502", "503"}
    assert clip["responses"]["206"]["headers"]["Content-Range"]["required"] is True
    assert "video_proof_path" not in doc["components"]["schemas"]["Event"]["properties"]
    params = {p["name"]: p["schema"] for p in doc["paths"]["/api/v1/events"]["get"]["parameters"]}
    assert set(params) == {"source", "label", "state", "zone", "sub_label", "stationary", "since", "until", "limit", "cursor"}
    assert params["stationary"] == {"type": "boolean", "examples": [False]} and "pattern" in params["zone"]
    assert params["limit"] | {"examples": None} == {
        "type": "integer",
        "minimum": 1,
        "maximum": 200,
        "default": 50,
        "examples": None,
    }
    assert doc["components"]["schemas"][params["state"]["$ref"].rsplit("/", 1)[1]]["enum"] == [s.value for s in EventState]
    refs = _refs(doc)
    assert refs and all(r.startswith("#/components/schemas/") for r in refs)
    assert {r.rsplit("/", 1)[1] for r in refs} <= set(doc["components"]["schemas"])  # every reference resolves
    assert "$defs" not in json.dumps(doc)
    for path in doc["paths"].values():  # every operation says it may answer 400 (any unknown parameter)
        assert path["get"]["responses"]["400"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}


TOKEN = "Kq9xQ2mZ7vB4nT8wR1yH5jL3pF6sD0gA-test"


async def test_token_auth_and_no_cors_by_default(servers: ServerSet, caplog: pytest.LogCaptureFixture) -> None:
    prefix = f"t{secrets.token_hex(4)}"
    # The default api (loopback, no token): no CORS headers.
    async with (
        running(api_service(servers, prefix), ready=lambda s: bool(s.url)) as open_api,
        aiohttp.ClientSession() as http,
        http.get(f"{open_api.url}api/v1/events", headers={"Origin": "http://evil.example"}) as resp,
    ):
        assert resp.status == 200 and "Access-Control-Allow-Origin" not in resp.headers

    service = api_service(servers, prefix, api_token=TOKEN, api_cors_origins=["http://ops.example"])
    jar = aiohttp.CookieJar(unsafe=True)  # keep cookies of an IP address host, as a browser does
    with caplog.at_level(logging.INFO, logger="vigil.api"):
        async with running(service, ready=lambda s: bool(s.url)), aiohttp.ClientSession(cookie_jar=jar) as http:
            base = service.url.rstrip("/")
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
                async with http.get(f"{base}/api/v1/events", headers=headers) as resp:
                    assert resp.status == 401 and (await resp.json())["error"]["status"] == 401
            # A token never travels in a URL (logs, history, Referer): in one it opens nothing.
            await get_json(http, f"{base}/api/v1/events?token={TOKEN}", 401)
            async with http.get(f"{base}/api/v1/events", headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
                assert resp.status == 200
            doc = await get_json(http, f"{base}/api/v1/openapi.json")  # the description is public
            assert {"bearer", "session"} == set(doc["components"]["securitySchemes"]) and doc["security"]
            assert all(("401" in p["get"]["responses"]) == ("security" not in p["get"]) for p in doc["paths"].values())
            assert doc["paths"]["/api/v1/openapi.json"]["get"]["security"] == []
            async with http.get(f"{base}/healthz") as resp:  # probes need no token
                assert resp.status == 200
            async with http.get(f"{base}/", allow_redirects=False) as resp:  # a person is sent to log in
                assert resp.status == 303 and resp.headers["Location"] == "/login"
            async with http.post(f"{base}/login", data={"token": "wrong"}, allow_redirects=False) as resp:
                assert resp.status == 401 and "vigil_session" not in resp.cookies
            async with http.post(f"{base}/login", data={"token": TOKEN}, allow_redirects=False) as resp:
                assert resp.status == 303 and resp.headers["Location"] == "/"
                cookie = resp.cookies["vigil_session"]
                assert cookie["httponly"] and cookie["samesite"] == "Strict" and int(cookie["max-age"]) == 12 * 3600
                assert TOKEN not in cookie.value and TOKEN not in resp.headers.get("Set-Cookie", "")
            async with http.get(f"{base}/api/v1/totals") as resp:  # the session: the page's own requests carry it
                assert resp.status == 200
            async with http.get(f"{base}/") as resp:
                assert resp.status == 200 and "<title>Vigil</title>" in await resp.text()
            expires, _, signature = cookie.value.partition(".")
            forged = f"{int(expires) + 86400}.{signature}"  # a longer session, with the old signature
            async with (
                aiohttp.ClientSession() as other,
                other.get(f"{base}/api/v1/totals", headers={"Cookie": f"vigil_session={forged}"}) as resp,
            ):
                assert resp.status == 401
            async with http.get(
                f"{base}/api/v1/events", headers={"Origin": "http://ops.example", "Authorization": f"Bearer {TOKEN}"}
            ) as resp:
                assert resp.headers["Access-Control-Allow-Origin"] == "http://ops.example"
            async with http.options(f"{base}/api/v1/events", headers={"Origin": "http://evil.example"}) as resp:
                assert "Access-Control-Allow-Origin" not in resp.headers
    access = [r.getMessage() for r in caplog.records if r.name == "vigil.api.access"]
    assert any(re.fullmatch(r"GET /api/v1/totals 200 [0-9.]+ ms 127\.0\.0\.1", line) for line in access), access
    assert any(line.startswith("POST /login 401 ") for line in access)
    assert any(line.startswith("GET /api/v1/events?token=*** 401 ") for line in access)
    assert TOKEN not in caplog.text


async def test_failed_logins_are_limited_per_client(servers: ServerSet) -> None:
    service = api_service(servers, f"t{secrets.token_hex(4)}", api_token=TOKEN, api_login_failures=3)
    async with running(service, ready=lambda s: bool(s.url)), aiohttp.ClientSession() as http:
        base = service.url.rstrip("/")
        for _ in range(2):
            async with http.post(f"{base}/login", data={"token": "guess"}, allow_redirects=False) as resp:
                assert resp.status == 401
        async with http.get(f"{base}/api/v1/events", headers={"Authorization": "Bearer guess"}) as resp:
            assert resp.status == 401  # a wrong bearer token counts too: the third failure
        for attempt in ({"data": {"token": TOKEN}}, {"data": {"token": "guess"}}):  # even the right one, now
            async with http.post(f"{base}/login", allow_redirects=False, **attempt) as resp:  # type: ignore[arg-type]
                assert resp.status == 429 and 1 <= int(resp.headers["Retry-After"]) <= 60
                assert "too many failed logins" in (await resp.json())["error"]["message"]
        async with http.get(f"{base}/api/v1/events", headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
            assert resp.status == 429
        async with http.get(f"{base}/healthz") as resp:
            assert resp.status == 200


def writer(servers: ServerSet, service: ApiService) -> VigilSettings:
    """The test's admin login, under the api's prefix: what the fleet's writers can do, the api cannot."""
    return settings_from(VigilSettings, servers.env(), subject_prefix=service.settings.subject_prefix)


async def store_event(settings: VigilSettings, label: str, clip: bytes, jpeg: bytes) -> Event:
    """As the registrator would: `settings` log in as a writer (the api's own user only reads)."""
    """A FINISHED event of `label` with this clip and key frame, its id made by the registrator's own rule."""
    rules = EventRules(watch_labels=frozenset({label}), min_score=0.5, gap=2.0, max_duration=30.0)
    box = BBox(x1=0.1, y1=0.1, x2=0.3, y2=0.4)
    frame = FrameRef(source_id="cam9", seq=0, pts=0.0, wall_time=time.time(), url="http://h/0", width=10, height=10)
    result = InferenceResult(
        frame=frame,
        model="ssd",
        kind=ModelKind.DETECTION,
        instance="i",
        detections=[Detection.on_image(label, 9, 0.9, box, 10, 10)],
        finished_at=0,
    )
    (opened,), _ = EventTracker(rules).observe(result)
    opened.state = EventState.FINISHED
    async with SeaweedStorage(settings) as storage:
        folder = remote_folder(opened.id)
        event = opened.record(
            video_proofs=await storage.put_path(f"{folder}/c.mp4", clip, content_type="video/mp4"),
            image_proofs=await storage.put_path(f"{folder}/k.jpg", jpeg, content_type="image/jpeg"),
            image_annotated_proofs=await storage.put_path(f"{folder}/b.jpg", jpeg, content_type="image/jpeg"),
        )
    redis = redis_client(settings)
    try:
        await EventStore(redis, RedisKeys(settings)).save(event)
    finally:
        await redis.aclose()
    return event


async def test_an_event_of_a_label_with_a_space_can_be_opened(servers: ServerSet) -> None:
    """15 of the 80 COCO labels hold a space; their events' ids once did too, and every api route refused them."""
    clip = secrets.token_bytes(100_000)  # what the api serves is the stored bytes, whatever they are
    jpeg = encode_jpeg(np.zeros((10, 10, 3), np.uint8))
    service = api_service(servers, f"t{secrets.token_hex(4)}")
    event = await store_event(writer(servers, service), "traffic light", clip, jpeg)
    assert "traffic" not in event.id and re.fullmatch(EVENT_ID_PATTERN, event.id)
    async with running(service, ready=lambda s: bool(s.url)), aiohttp.ClientSession() as http:
        base = f"{service.url}api/v1/events/{event.id}"
        assert (await get_json(http, base))["label"] == "traffic light"
        async with http.get(f"{base}/clip") as resp:
            assert resp.status == 200 and await resp.read() == clip
        # Ranges go to the filer as ranges: the bytes asked for, from a clip the api never holds.
        for header, (first, last) in {
            "bytes=10-19": (10, 19),
            "bytes=99990-": (99990, 99999),
            "bytes=-5": (99995, 99999),
        }.items():
            async with http.get(f"{base}/clip", headers={"Range": header}) as resp:
                assert resp.status == 206 and resp.headers["Content-Range"] == f"bytes {first}-{last}/100000"
                assert await resp.read() == clip[first : last + 1]
        async with http.get(f"{base}/clip", headers={"Range": "bytes=100000-"}) as resp:
            assert resp.status == 416 and resp.headers["Content-Range"] == "bytes */100000"
        for query in ("", "?annotated=true"):
            async with http.get(f"{base}/keyframe{query}") as resp:
                assert resp.status == 200 and await resp.read() == jpeg
        listed = await get_json(http, f"{service.url}api/v1/events?label=traffic%20light")
        assert [e["id"] for e in listed["events"]] == [event.id]


async def test_unreadable_records_are_skipped_and_counted_and_big_clips_refused(servers: ServerSet) -> None:
    service = api_service(servers, f"t{secrets.token_hex(4)}", api_clip_max_mb=1)
    keys = RedisKeys(service.settings)
    jpeg = encode_jpeg(np.zeros((10, 10, 3), np.uint8))
    small = await store_event(writer(servers, service), "person", b"\x00" * 1000, jpeg)
    big = await store_event(writer(servers, service), "person", b"\x00" * (1024 * 1024 + 1), jpeg)
    redis = redis_client(writer(servers, service))
    try:  # a record of no known shape, and one whose id is a traversal: written by anyone who reaches Redis
        await redis.zadd(keys.events, {b'{"v": 1, "id": "x"}': time.time(), b"not json": time.time()})
        await redis.hset(keys.event_index, "broken", b'{"v": 1, "id": "x"}')
        await redis.set(keys.source_health("cam9"), b'{"v": 1, "source_id": "cam9"}')
    finally:
        await redis.aclose()
    async with running(service, ready=lambda s: bool(s.url)), aiohttp.ClientSession() as http:
        page = await get_json(http, f"{service.url}api/v1/events")
        assert sorted(e["id"] for e in page["events"]) == sorted([small.id, big.id])  # once a 500
        assert (await get_json(http, f"{service.url}api/v1/sources"))["sources"] == []
        await get_json(http, f"{service.url}api/v1/events/broken", 404)
        unreadable = service.metrics.registry.get_sample_value
        assert unreadable("vigil_api_unreadable_records_total", {"kind": "Event"}) == 3
        assert unreadable("vigil_api_unreadable_records_total", {"kind": "SourceHealth"}) == 1
        async with http.get(f"{service.url}api/v1/events/{small.id}/clip") as resp:
            assert resp.status == 200 and len(await resp.read()) == 1000
        body = await get_json(http, f"{service.url}api/v1/events/{big.id}/clip", 502)
        assert body["error"]["message"] == "the clip is 1.0 MiB, over api_clip_max_mb (1 MiB)"


async def test_a_configured_source_without_events_has_a_layout_without_a_frame(servers: ServerSet) -> None:
    """Zones as Frigate writes them (a flat string) come back as corner pairs; no event yet: no frame to draw on."""
    zones = {"gate": {"zones": {"drive": {"points": "0.1,0.5,0.4,0.5,0.4,1"}}}}
    service = api_service(servers, f"t{secrets.token_hex(4)}", zones=zones)
    async with running(service, ready=lambda s: bool(s.url)), aiohttp.ClientSession() as http:
        layout = await get_json(http, f"{service.url}api/v1/sources/gate/layout")
        assert layout == {
            "source_id": "gate",
            "zones": {"drive": [[0.1, 0.5], [0.4, 0.5], [0.4, 1.0]]},
            "lines": {},
            "frame": None,
        }
        await get_json(http, f"{service.url}api/v1/sources/cam0/layout", status=404)  # no zones, no events here
