"""Zones and notifications on the whole fleet: real models, the first 30 s of the sample video, one run.

The reader serves the same clip as three sources: `whole` (no zones), `zoned` (events must enter the zone `near`)
and `masked` (detections in the zone `mask` are ignored). The rule is the detector's, so it applies to each source
as far as the source defines its zones (services/registrator/objects.py): one run gives the unfiltered count
beside the filtered ones. The notifier sends every notice of the run to a webhook receiver and to an MQTT
subscriber of Debian's mosquitto.

Zones were chosen on frames 0, 100, 200 and 300 of video/vtest.mp4 (768x576): people cross the plaza between
y = 0.3 and 0.65, and some come down the walkway on the lower right, where `near` lies (x > 0.6, y > 0.5: their
feet, the boxes' bottom centres). `mask` is the left half.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from fleet.run import FleetOptions, FleetReport, run_fleet
from fleet.servers import LocalServers
from services.registrator.zones import bottom_centre
from shared.contracts import Event, EventState
from tests.integration.helpers import wait_for
from tests.support.media import first_seconds
from tests.support.mosquitto import Mosquitto, MqttWatch, mosquitto_binary
from tests.support.webhook import Receiver, Request

pytestmark = pytest.mark.timeout(600)  # the first test waits for the fleet's run: 6.5 min beside two CPU burners

SECONDS, SKIP = 30.0, 3  # 300 frames, one in four kept: 75 per source
DETECTOR = "ssd_mobilenet_v2_coco"
NEAR = [[0.6, 0.5], [1.0, 0.5], [1.0, 1.0], [0.6, 1.0]]
MASK = [[0.0, 0.0], [0.5, 0.0], [0.5, 1.0], [0.0, 1.0]]
SECRET = b"e2e-signing-key"


@dataclass(frozen=True)
class ZonesRun:
    report: FleetReport
    webhook: list[Request]
    mqtt: list[dict[str, Any]]

    def finished(self, source_id: str) -> list[Event]:
        return [e for e in self.report.events if e.source_id == source_id and e.state is EventState.FINISHED]


def fleet_settings(prefix: str, clip: Path, secret_file: Path, receiver: Receiver, mqtt_port: int) -> dict[str, str]:
    sources = [{"source_id": name, "url": str(clip), "skip_frames": SKIP} for name in ("whole", "zoned", "masked")]
    zones = {"zoned": {"zones": {"near": {"points": NEAR}}}, "masked": {"zones": {"mask": {"points": MASK}}}}
    rules = {DETECTOR: {"labels": {"person": 0.5}, "require_zones": ["near"], "exclude_zones": ["mask"]}}
    return {
        "subject_prefix": prefix,
        # Three sources read at once fill one detector's queue with 225 frames: on a loaded CI machine (2 cores)
        # the last wait longer than the default 45 s and would expire unanswered.
        "task_max_age": "300",
        "drain_timeout": "330",
        "sources": json.dumps(sources),
        "zones": json.dumps(zones),
        "event_rules": json.dumps(rules),
        "webhooks": json.dumps([{"url": receiver.url}]),
        "webhook_secret_file": str(secret_file),
        "mqtt_host": "127.0.0.1",
        "mqtt_port": str(mqtt_port),
        "mqtt_topic_prefix": prefix,
    }


def ends_arrived(events: list[Event], notices: list[dict[str, Any]]) -> bool:
    ended = {n["after"]["id"] for n in notices if n["type"] == "end"}
    return {e.id for e in events} <= ended


async def run_with_receivers(servers: LocalServers, folder: Path, broker: Mosquitto, video: Path) -> ZonesRun:
    prefix = f"t{secrets.token_hex(4)}"
    clip = first_seconds(video, folder / "clip.mp4", SECONDS)
    secret_file = folder / "webhook.key"
    secret_file.write_bytes(SECRET)
    receiver = Receiver(SECRET)
    await receiver.start()
    watch = MqttWatch(broker.port, f"{prefix}/events")
    watching = asyncio.create_task(watch.run())
    try:
        await asyncio.wait_for(watch.ready.wait(), 10)
        settings = fleet_settings(prefix, clip, secret_file, receiver, broker.port)
        # No classification worker: nothing here needs it, and the detector alone keeps the run short.
        report = await run_fleet(servers, FleetOptions(folder, classification=0, settings=settings), asyncio.Event())
        # The fleet stops once the notifier has delivered everything; MQTT's copies may still be on their way.
        await wait_for(lambda: ends_arrived(report.events, watch.got), 15, "every event's end notice over MQTT")
        return ZonesRun(report, list(receiver.requests), list(watch.got))
    finally:
        watching.cancel()
        await receiver.stop()


@pytest.fixture(scope="module")
def zones_run(local_servers: LocalServers, tmp_path_factory: pytest.TempPathFactory, repo_root: Path) -> Iterator[ZonesRun]:
    binary = mosquitto_binary()
    if binary is None:
        pytest.skip("no mosquitto binary: scripts/install-test-deps.sh installs Debian's (as root)")
    folder = tmp_path_factory.mktemp("zones-run")
    broker = Mosquitto(binary, folder)
    # A sync fixture with its own loop, as the sample run's: the run is shared by tests that each have their own.
    asyncio.run(broker.start())
    try:
        yield asyncio.run(run_with_receivers(local_servers, folder, broker, repo_root / "video" / "vtest.mp4"))
    finally:
        broker.stop()


def test_the_run_reads_every_source_to_its_end(zones_run: ZonesRun) -> None:
    report = zones_run.report
    assert report.code == 0 and report.error_results == {}
    assert set(report.drained) == {"whole", "zoned", "masked"}
    for source_id, drained in report.drained.items():
        assert report.sources[source_id].frames_read == SECONDS * 10 / (SKIP + 1), source_id
        assert drained.results == drained.tasks == {DETECTOR: drained.frames_routed}, source_id


def test_a_required_zone_gives_only_events_that_entered_it(zones_run: ZonesRun) -> None:
    whole, zoned = zones_run.finished("whole"), zones_run.finished("zoned")
    assert all(e.zones == [] for e in whole)  # a source without zones records none
    # Offline (the same detector and tracker on the same frames): 19 events, 7 of them enter `near`, 14 masked.
    assert 0 < len(zoned) < len(whole), (len(zoned), len(whole))
    assert all(e.zones == ["near"] for e in zoned), [(e.id, e.zones) for e in zoned]


def test_an_excluded_zone_masks_what_stands_in_it(zones_run: ZonesRun) -> None:
    whole, masked = zones_run.finished("whole"), zones_run.finished("masked")
    assert 0 < len(masked) < len(whole), (len(masked), len(whole))
    for event in masked:
        # Detections standing in the left half are dropped before tracking: no sighting of an event lies there.
        # The path holds box centres, whose x is that of the bottom centre the zone tests.
        assert event.zones == [] and event.best_box is not None, event.id
        assert bottom_centre(event.best_box)[0] >= 0.5 and min(x for _, x, _ in event.path) >= 0.5, event.id
    assert any(min(x for _, x, _ in e.path) < 0.5 for e in whole)  # unmasked, people are seen there


def test_each_event_notifies_new_and_end_on_the_webhook_and_mqtt(zones_run: ZonesRun) -> None:
    events = {e.id: e for e in zones_run.report.events}
    assert len(events) >= 10 and all(e.state is EventState.FINISHED for e in events.values())
    assert zones_run.webhook and all(r.signed and r.status == 200 for r in zones_run.webhook)  # HMAC checked
    webhook = [r.notice for r in zones_run.webhook]
    for channel, notices in (("webhook", webhook), ("mqtt", zones_run.mqtt)):
        kinds: dict[str, list[str]] = defaultdict(list)
        for notice in notices:
            kinds[notice["after"]["id"]].append(notice["type"])
        assert kinds.keys() == events.keys(), channel
        for event_id, sequence in kinds.items():
            # new first, end last, updates between: each once, no notifier restarted here
            assert sequence[0] == "new" and sequence[-1] == "end", (channel, event_id, sequence)
            assert set(sequence[1:-1]) <= {"update"}, (channel, event_id, sequence)
        for notice in (n for n in notices if n["type"] == "end"):
            assert Event.model_validate(notice["after"]) == events[notice["after"]["id"]], channel  # the stored record
