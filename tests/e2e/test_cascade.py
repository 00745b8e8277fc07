"""The cascade end to end (issue 18): the fleet as processes on the real servers and models, on a clip of two
cars. reader -> router -> detection -> the router's crop tasks -> classification of the crops -> registrator,
which gives each car's event the majority ImageNet class of its crops as its sub-label."""

from __future__ import annotations

import asyncio
import json
import secrets
from pathlib import Path

import pytest

from fleet.run import FleetOptions, run_fleet
from fleet.servers import LocalServers
from shared.contracts import EventState

DETECTOR, CLASSIFIER = "ssd_mobilenet_v2_coco", "efficientnet_lite0"
# EfficientNet-Lite0's ImageNet classes (their first names) that are road vehicles or parts of one.
VEHICLES = frozenset(
    {
        "ambulance", "beach wagon", "cab", "car wheel", "convertible", "fire engine", "garbage truck", "grille",
        "jeep", "limousine", "minibus", "minivan", "Model T", "moving van", "pickup", "police van", "racer",
        "recreational vehicle", "school bus", "sports car", "tow truck", "trailer truck", "trolleybus",
    }
)  # fmt: skip
FRAMES = 38  # video/cars.mp4 (video/PROVENANCE.md): two saloons ahead, in every frame


@pytest.mark.timeout(300)
async def test_vehicle_events_get_vehicle_sub_labels_from_their_crops(local_servers: LocalServers, tmp_path: Path) -> None:
    rule = {"on": {"model": DETECTOR, "labels": ["car", "truck", "bus"], "min_area": 0.01, "min_score": 0.5}}
    settings = {
        "subject_prefix": f"t{secrets.token_hex(4)}",
        "video_source": "video/cars.mp4",
        "watch_labels": json.dumps(["car", "truck", "bus"]),
        "routing_rules": json.dumps({CLASSIFIER: rule}),
    }
    report = await run_fleet(local_servers, FleetOptions(tmp_path, settings=settings), asyncio.Event())
    assert report.code == 0 and report.error_results == {}

    drained = report.drained["cam0"]
    # The classifier got no whole frame: only crops, answered one task per frame with cars in it.
    assert drained.tasks == {DETECTOR: FRAMES} and drained.results[DETECTOR] == FRAMES
    assert 0 < drained.results.get(CLASSIFIER, 0) <= FRAMES

    cars = [e for e in report.events if e.label == "car" and e.state is EventState.FINISHED]
    # Two cars, each tracked through the clip (a third, far one scores 0.5-0.66 in a few frames at most).
    assert len(cars) >= 2, [(e.id, e.track_id, e.frames) for e in report.events]
    described = [(e.track_id, e.frames, e.sub_label, e.sub_label_score) for e in cars]
    long_tracks = [e for e in cars if e.frames >= FRAMES // 2]
    assert len(long_tracks) == 2, described
    for event in long_tracks:
        assert event.sub_label in VEHICLES, described
        assert event.sub_label_score is not None and 0 < event.sub_label_score <= 1
