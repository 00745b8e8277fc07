"""The dashboard in a real headless Chromium (Debian's `chromium` and `chromium-driver`, driven by Selenium)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from shared.contracts import Event, EventState
from tests.conftest import REPO_ROOT
from tests.e2e.conftest import FPS, SAMPLE_ZONES, SampleRun
from tests.support.browser import CHROMIUM, DRIVER, MISSING, browser, wait_until

ARTIFACTS = REPO_ROOT / ".data" / "artifacts"  # looked at after a run; docs/ holds the committed copies
ARTIFACT = ARTIFACTS / "dashboard.png"
SOURCE_ARTIFACT = ARTIFACTS / "dashboard-source.png"

pytestmark = [pytest.mark.timeout(400), pytest.mark.skipif(CHROMIUM is None or DRIVER is None, reason=MISSING)]

# What an overlay (#scene, #source-frame) drew: its zones (the entered ones apart), lines, path points and box.
DRAWN = """
const figure = document.querySelector(arguments[0]);
const svg = figure.querySelector('svg');
const path = svg.querySelector('g.path');
return {
  zones: [...svg.querySelectorAll('g.zone')].map(g => g.dataset.zone),
  entered: [...svg.querySelectorAll('g.zone.entered')].map(g => g.dataset.zone),
  polygon_points: [...svg.querySelectorAll('g.zone polygon')].map(p => p.points.numberOfItems),
  lines: [...svg.querySelectorAll('g.line')].map(g => g.dataset.line),
  path_points: path ? path.querySelector('polyline').points.numberOfItems : 0,
  box: svg.querySelector('rect.box') !== null,
  viewbox: svg.getAttribute('viewBox'),
  image: figure.querySelector('img').naturalWidth,
};
"""


def listed(driver: Any) -> list[str]:
    return list(driver.execute_script("return [...document.querySelectorAll('#events li')].map(li => li.dataset.eventId);"))


def drive_dashboard(url: str, expected_ids: list[str], chosen: str, zone: str, in_zone: list[str]) -> dict[str, Any]:
    driver = browser()
    try:
        driver.get(url)
        wait_until(driver, f"document.querySelectorAll('#events li').length === {len(expected_ids)}", "the event list")
        shown = listed(driver)
        # Thumbnails are the events' key frames: wait until each has loaded.
        wait_until(
            driver, "[...document.querySelectorAll('#events img')].every(i => i.complete && i.naturalWidth > 0)", "the thumbnails"
        )
        # Clicked in the page: the list is rebuilt every refresh, so an element found first may be gone by the click.
        driver.execute_script(f"document.querySelector(\"#events li[data-event-id='{chosen}']\").click();")
        wait_until(driver, f"document.querySelector('#player').dataset.eventId === '{chosen}'", "the clip to be chosen")
        wait_until(driver, "document.querySelector('#player').readyState >= 1", "the clip's metadata")
        driver.execute_script("const v = document.querySelector('#player'); v.muted = true; v.play();")
        wait_until(driver, "document.querySelector('#player').currentTime > 0.5", "the clip to play")
        video = driver.execute_script(
            "const v = document.querySelector('#player');"
            "return {readyState: v.readyState, duration: v.duration, error: v.error && v.error.code,"
            " width: v.videoWidth, height: v.videoHeight};"
        )
        # The event view: the snapshot loaded, the path and zones drawn over the key frame.
        wait_until(driver, "(i => i.complete && i.naturalWidth > 0)(document.querySelector('#snapshot img'))", "the snapshot")
        wait_until(driver, f"document.querySelector('#scene').dataset.drawnFor === '{chosen}'", "the path and zones")
        scene = driver.execute_script(DRAWN, "#scene")
        snapshot = driver.execute_script(
            "const u = new URL(document.querySelector('#snapshot img').src); return u.pathname + u.search;"
        )
        wait_until(driver, "document.querySelector('#sources tbody tr') !== null", "the live panel")
        panel = driver.execute_script("return document.querySelector('#sources tbody tr').innerText;")
        totals = driver.execute_script("return document.querySelector('#totals').textContent;")
        details = driver.execute_script("return document.querySelector('#details').innerText;")
        filters = driver.execute_script(
            "return Object.fromEntries(['zone', 'sub_label', 'stationary'].map(n => "
            "[n, [...document.querySelectorAll(`#filters [name=${n}] option`)].map(o => o.value)]));"
        )
        ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(ARTIFACT))

        # The zone filter: the list becomes the events that entered it.
        driver.execute_script(
            "const s = document.querySelector('#filters [name=zone]'); s.value = arguments[0];"
            "s.dispatchEvent(new Event('change', {bubbles: true}));",
            zone,
        )
        ids = "JSON.stringify([...document.querySelectorAll('#events li')].map(li => li.dataset.eventId))"
        wait_until(driver, f"{ids} === '{json.dumps(in_zone, separators=(',', ':'))}'", "the zone's events")
        filtered = listed(driver)

        # The source's own page: its zones and lines over its newest key frame.
        driver.execute_script("document.querySelector('#sources tbody a').click();")
        wait_until(driver, "document.querySelector('#source-frame').dataset.drawnFor === 'cam0'", "the source page")
        wait_until(driver, "document.querySelector('#source-frame img').naturalWidth > 0", "the source's key frame")
        source = driver.execute_script(DRAWN, "#source-frame")
        source["fleet_hidden"] = driver.execute_script("return document.querySelector('#fleet-page').hidden;")
        source["lines_table"] = driver.execute_script("return document.querySelector('#source-lines tbody').innerText;")
        driver.save_screenshot(str(SOURCE_ARTIFACT))
        return {
            "listed": shown,
            "video": video,
            "panel": panel,
            "totals": totals,
            "details": details,
            "scene": scene,
            "snapshot": snapshot,
            "filters": filters,
            "filtered": filtered,
            "source": source,
        }
    finally:
        driver.quit()


def choose(finished: list[Event]) -> Event:
    """Not the newest (the page selects that itself): the one that went furthest through the zones."""
    return max(finished[1:] or finished, key=lambda e: (len(e.zones), len(e.path), e.id))


async def test_dashboard_lists_events_and_plays_the_chosen_clip(api: str, sample_run: SampleRun) -> None:
    events = sorted(sample_run.report.events, key=lambda e: (e.start_wall, e.id), reverse=True)
    finished = [e for e in events if e.state is EventState.FINISHED]
    chosen = choose(finished)
    assert chosen.zones and len(chosen.path) >= 2 and chosen.best_box is not None  # something to draw
    clip_seconds = chosen.clip_frames / FPS
    zone = "east_path"
    in_zone = [e.id for e in events if zone in e.zones]
    assert in_zone and len(in_zone) < len(events)  # the filter has something to keep and something to drop
    # Selenium blocks; the api serves from this loop meanwhile.
    seen = await asyncio.to_thread(drive_dashboard, api + "/", [e.id for e in events], chosen.id, zone, in_zone)

    assert seen["listed"] == [e.id for e in events]  # newest first, all of them
    video = seen["video"]
    assert video["error"] is None and video["readyState"] >= 2
    assert abs(video["duration"] - clip_seconds) < 0.25, (video, clip_seconds)
    assert (video["width"], video["height"]) == (768, 576)
    assert chosen.id in seen["details"]
    for shown in ("sub-label", "stationary", ", ".join(chosen.zones)):
        assert shown in seen["details"], shown
    assert seen["panel"].split()[:2] == ["cam0", "ended"]
    # A file waits for its models: nothing shed, and the line says so beside what was inferred.
    assert " · 0 shed · " in seen["totals"] and " inferences · " in seen["totals"], seen["totals"]
    configured = SAMPLE_ZONES["cam0"]
    # The snapshot is the best frame with the object's box; the path and every zone drawn over the key frame.
    assert seen["snapshot"] == f"/api/v1/events/{chosen.id}/keyframe?annotated=true"
    scene = seen["scene"]
    assert scene["zones"] == list(configured["zones"]) and sorted(scene["entered"]) == sorted(set(chosen.zones))
    assert scene["polygon_points"] == [len(z["points"]) for z in configured["zones"].values()]
    assert scene["path_points"] == len(chosen.path) and scene["box"]
    assert scene["image"] == 768 and scene["viewbox"] == "0 0 768 576"  # drawn in the key frame's pixels
    assert set(seen["filters"]["zone"]) == {"", *configured["zones"]}
    assert seen["filters"]["stationary"] == ["", "false", "true"] and "" in seen["filters"]["sub_label"]
    assert seen["filtered"] == in_zone
    source = seen["source"]
    assert source["zones"] == list(configured["zones"]) and source["lines"] == list(configured["lines"])
    assert source["entered"] == [] and source["path_points"] == 0 and source["fleet_hidden"]
    assert source["image"] == 768 and "lamp" in source["lines_table"]
    assert ARTIFACT.stat().st_size > 10_000 and SOURCE_ARTIFACT.stat().st_size > 10_000
