"""The dashboard in a real headless Chromium (Debian's `chromium` and `chromium-driver`, driven by Selenium)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from shared.contracts import EventState
from tests.conftest import REPO_ROOT
from tests.e2e.conftest import FPS, SampleRun
from tests.support.browser import CHROMIUM, DRIVER, MISSING, browser, wait_until

ARTIFACT = REPO_ROOT / ".data" / "artifacts" / "dashboard.png"  # looked at after a run; docs/ holds the committed copy

pytestmark = [pytest.mark.timeout(400), pytest.mark.skipif(CHROMIUM is None or DRIVER is None, reason=MISSING)]


def drive_dashboard(url: str, expected_ids: list[str], chosen: str, screenshot: Path) -> dict[str, Any]:
    driver = browser()
    try:
        driver.get(url)
        wait_until(driver, f"document.querySelectorAll('#events li').length === {len(expected_ids)}", "the event list")
        listed = driver.execute_script("return [...document.querySelectorAll('#events li')].map(li => li.dataset.eventId);")
        # Thumbnails are the events' key frames: wait until each has loaded.
        wait_until(
            driver, "[...document.querySelectorAll('#events img')].every(i => i.complete && i.naturalWidth > 0)", "the thumbnails"
        )
        driver.find_element("css selector", f"#events li[data-event-id='{chosen}']").click()
        wait_until(driver, f"document.querySelector('#player').dataset.eventId === '{chosen}'", "the clip to be chosen")
        wait_until(driver, "document.querySelector('#player').readyState >= 1", "the clip's metadata")
        driver.execute_script("const v = document.querySelector('#player'); v.muted = true; v.play();")
        wait_until(driver, "document.querySelector('#player').currentTime > 0.5", "the clip to play")
        video = driver.execute_script(
            "const v = document.querySelector('#player');"
            "return {readyState: v.readyState, duration: v.duration, error: v.error && v.error.code,"
            " width: v.videoWidth, height: v.videoHeight};"
        )
        wait_until(driver, "document.querySelector('#sources tbody tr') !== null", "the live panel")
        panel = driver.execute_script("return document.querySelector('#sources tbody tr').innerText;")
        details = driver.execute_script("return document.querySelector('#details').innerText;")
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(screenshot))
        return {"listed": listed, "video": video, "panel": panel, "details": details}
    finally:
        driver.quit()


async def test_dashboard_lists_events_and_plays_the_chosen_clip(api: str, sample_run: SampleRun) -> None:
    events = sorted(sample_run.report.events, key=lambda e: (e.start_wall, e.id), reverse=True)
    finished = [e for e in events if e.state is EventState.FINISHED]
    chosen = finished[1] if len(finished) > 1 else finished[0]  # not the first: the page selects that itself
    clip_seconds = chosen.clip_frames / FPS
    # Selenium blocks; the api serves from this loop meanwhile.
    seen = await asyncio.to_thread(drive_dashboard, api + "/", [e.id for e in events], chosen.id, ARTIFACT)

    assert seen["listed"] == [e.id for e in events]  # newest first, all of them
    video = seen["video"]
    assert video["error"] is None and video["readyState"] >= 2
    assert abs(video["duration"] - clip_seconds) < 0.25, (video, clip_seconds)
    assert (video["width"], video["height"]) == (768, 576)
    assert chosen.id in seen["details"]
    assert seen["panel"].split()[:2] == ["cam0", "ended"]
    assert ARTIFACT.stat().st_size > 10_000
