"""The cascade (issue 18): which detections become crops, the crop geometry, the contracts, and the sub-labels
the crops' classes give the tracks. The router runs its real `run()` on tests/support/fake_bus.py."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from services.registrator.events import EventRules
from services.registrator.objects import ObjectEventTracker, ObjectRules
from services.registrator.tracking import TrackerSettings
from services.router.rules import CropRule, ModelRule, RoutingRules
from services.router.settings import RouterSettings
from services.worker.crops import crop_region, cut, pixels_needed_for_crops
from shared.contracts import (
    BBox,
    Classification,
    CropLabels,
    CropRequest,
    DropPolicy,
    FrameRef,
    InferenceResult,
    InferenceTask,
    ModelKind,
)
from shared.metrics import counter_value
from shared.subjects import ROUTER_CROPS_DURABLE, ROUTER_DURABLE, task_stream_name
from tests.integration.helpers import wait_for
from tests.support.fake_bus import FakeMsg
from tests.support.offline_router import heartbeat, offline_router
from tests.support.settings import settings_from
from tests.support.tracks import Walker, detection, result, scene

CARS = CropRule(model="ssd", labels=["car", "truck", "bus"], min_score=0.5, min_area=0.01, max_crops=2)
MODELS, TO_CLS = ["ssd", "cls"], {"cls": {"on": CARS.model_dump()}}  # the router's live models, and a cascade rule


def box(x1: float, y1: float, x2: float, y2: float) -> BBox:
    return BBox(x1=x1, y1=y1, x2=x2, y2=y2)


def detections(*dets: tuple[str, float, BBox], seq: int = 0, model: str = "ssd", source: str = "cam0") -> InferenceResult:
    frame = FrameRef(source_id=source, seq=seq, pts=seq / 10, wall_time=1.0, url="http://h/1,01", width=640, height=480)
    found = [detection((b.x1 * 640, b.y1 * 480, b.x2 * 640, b.y2 * 480), score, label) for label, score, b in dets]
    return InferenceResult(frame=frame, model=model, kind=ModelKind.DETECTION, instance="i", detections=found, finished_at=0)


# -- the rule ------------------------------------------------------------------------------------


def test_only_the_rules_labels_at_its_score_and_area_become_crops_largest_first() -> None:
    rules = RoutingRules({"cls": ModelRule(on=CARS)})
    big, mid, small = box(0.0, 0.0, 0.5, 0.5), box(0.5, 0.5, 0.8, 0.8), box(0.1, 0.6, 0.3, 0.9)
    res = detections(
        ("car", 0.9, mid),
        ("person", 0.99, big),  # not a label of the rule
        ("truck", 0.6, big),
        ("bus", 0.4, big),  # under min_score
        ("car", 0.9, box(0.0, 0.0, 0.05, 0.05)),  # 0.0025 of the frame: under min_area
        ("car", 0.95, small),  # a third car: over max_crops, and the smallest
    )
    assert rules.crops("cls", res) == [big, mid]


def test_a_crop_rule_ignores_other_models_errors_and_models_without_it() -> None:
    rules = RoutingRules({"cls": ModelRule(on=CARS), "plain": ModelRule()})
    car = ("car", 0.9, box(0.0, 0.0, 0.5, 0.5))
    assert rules.crops("cls", detections(car, model="yolo")) == []  # crops of ssd's boxes only
    assert rules.crops("cls", detections(car).model_copy(update={"error": "bad image"})) == []
    assert rules.crops("plain", detections(car)) == [] and rules.crops("unruled", detections(car)) == []
    assert rules.cascades == {"ssd": ["cls"]}


def test_a_crop_model_gets_no_whole_frames_and_sampling_applies_to_its_crops() -> None:
    rules = RoutingRules({"cls": ModelRule(on=CARS, sources=["cam1"], every_nth=2)})
    car = ("car", 0.9, box(0.0, 0.0, 0.5, 0.5))
    assert rules.takes_crops("cls") and not rules.wants("cls", detections(car).frame)
    assert [seq for seq in range(4) if rules.crops("cls", detections(car, seq=seq, source="cam1"))] == [0, 2]
    assert rules.crops("cls", detections(car, source="cam0")) == []


def test_a_frame_without_crops_takes_no_slot_of_max_fps() -> None:
    rules = RoutingRules({"cls": ModelRule(on=CARS, max_fps=1.0)})
    car = ("car", 0.9, box(0.0, 0.0, 0.5, 0.5))
    assert rules.crops("cls", detections(seq=0)) == []  # nothing to crop at 0.0 s
    assert rules.crops("cls", detections(car, seq=1)) != []  # so the slot of this second is still free
    assert rules.crops("cls", detections(car, seq=5)) == []  # 0.5 s: the second's slot is taken


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        ({"cls": {"on": {"model": "ssd", "labels": []}}}, "labels"),
        ({"cls": {"on": {"model": "ssd", "labels": [" "]}}}, "must name detection labels"),
        ({"cls": {"on": {"model": "", "labels": ["car"]}}}, "on.model"),
        ({"cls": {"on": {"model": "cls", "labels": ["car"]}}}, "names cls itself"),
        (
            {"a": {"on": {"model": "ssd", "labels": ["car"]}}, "b": {"on": {"model": "a", "labels": ["car"]}}},
            "which itself gets crops",
        ),
        ({"cls": {"on": {"model": "ssd", "labels": ["car"], "max_crops": 0}}}, "max_crops"),
        ({"cls": {"on": {"model": "ssd", "labels": ["car"], "min_area": 2}}}, "min_area"),
        ({"cls": {"on": {"model": "ssd", "label": ["car"]}}}, "label"),
    ],
)
def test_bad_crop_rules_are_refused_with_what_to_fix(rules: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        settings_from(RouterSettings, routing_rules=rules)


# -- contracts -----------------------------------------------------------------------------------


def test_a_task_without_a_crop_still_parses_and_a_crop_task_is_its_own_message() -> None:
    frame = detections().frame
    plain = InferenceTask.from_bytes(InferenceTask.encode(frame.to_bytes(), "cls", 1.0))
    assert plain.crop is None
    crop = plain.model_copy(update={"crop": CropRequest(of="ssd", boxes=[box(0, 0, 1, 1)])})
    assert InferenceTask.from_bytes(crop.to_bytes()) == crop
    assert crop.msg_id() != plain.msg_id()  # the stream keeps both: the frame's own task and its crops'
    labels = [CropLabels(box=box(0, 0, 1, 1), classifications=[Classification(label="cab", class_id=468, score=0.5)])]
    base = InferenceResult(frame=frame, model="cls", kind=ModelKind.CLASSIFICATION, instance="i", finished_at=0)
    assert base.model_copy(update={"crop_of": "ssd", "crops": labels}).msg_id() != base.msg_id()


# -- crop geometry ---------------------------------------------------------------------------------


def test_a_crop_is_a_square_around_the_box_with_a_margin() -> None:
    # A wide box (a car from the side), 100 x 50 px in a 1000 x 500 frame, centred at (450, 225).
    region = crop_region(box(0.4, 0.4, 0.5, 0.5), (1000, 500))
    assert region == (395, 170, 505, 280)  # 110 px square: the longest side and 10 %
    x1, y1, x2, y2 = region
    assert x2 - x1 == y2 - y1 and x1 <= 400 and x2 >= 500 and y1 <= 200 and y2 >= 250


def test_a_crop_at_the_frames_edge_shifts_into_it_and_is_clipped_by_a_small_frame() -> None:
    assert crop_region(box(0.9, 0.0, 1.0, 0.1), (1000, 1000)) == (890, 0, 1000, 110)  # shifted, still square
    # A box as tall as the frame: the square is as high as the frame and as wide as it may be.
    assert crop_region(box(0.4, 0.0, 0.6, 1.0), (1000, 200)) == (390, 0, 610, 200)
    assert crop_region(box(0.5, 0.5, 0.5, 0.5), (100, 100))[2:] >= (51, 51)  # a box of no area still gives pixels


def test_small_crops_need_the_full_decode_and_large_ones_allow_a_reduced_one() -> None:
    def needs_256(size: tuple[int, int]) -> tuple[int, int]:  # a classifier that resizes the short side to 256
        scale = 256 / min(size)
        return round(size[0] * scale), round(size[1] * scale)

    frame = (1920, 1080)
    small = box(0.5, 0.5, 0.55, 0.55)  # ~106 px: shorter than 256, so the full frame is needed
    assert pixels_needed_for_crops(frame, [small], needs_256) == frame
    large = box(0.0, 0.0, 0.6, 1.0)  # a 1080 px square: a quarter of the frame's pixels still give it 270
    w, h = pixels_needed_for_crops(frame, [large], needs_256)
    assert w <= 1920 // 4 + 1 and h <= 1080 // 4 + 1 and h >= 256 / 1080 * 1080
    assert pixels_needed_for_crops(frame, [large, small], needs_256) == frame  # the neediest crop decides


def test_cut_gives_the_same_region_from_a_reduced_decode() -> None:
    full = np.arange(400 * 600 * 3, dtype=np.uint32).reshape(400, 600, 3).astype(np.uint8)
    b = box(0.25, 0.25, 0.5, 0.75)
    (crop,) = cut(full, (600, 400), [b])
    x1, y1, x2, y2 = crop_region(b, (600, 400))
    assert crop.shape == (y2 - y1, x2 - x1, 3) and np.array_equal(crop, full[y1:y2, x1:x2])
    half = full[::2, ::2]
    (reduced,) = cut(half, (600, 400), [b])
    assert abs(reduced.shape[0] - crop.shape[0] / 2) <= 1 and abs(reduced.shape[1] - crop.shape[1] / 2) <= 1


# -- the router emits crop tasks from detection results ------------------------------------------


async def test_the_router_sends_crops_of_detection_results_and_no_whole_frames_to_the_classifier() -> None:
    async with offline_router(MODELS, classifiers={"cls"}, routing_rules=TO_CLS) as (
        router,
        bus,
    ):
        car = ("car", 0.9, box(0.1, 0.1, 0.4, 0.5))
        frame = detections(car).frame
        frames = [FakeMsg.of(bus.subjects.frames("cam0"), frame)]
        results = [
            FakeMsg.of(bus.subjects.results("cam0"), detections(car, seq=0)),
            FakeMsg.of(bus.subjects.results("cam0"), detections(("person", 0.9, box(0, 0, 1, 1)), seq=1)),
            FakeMsg.of(
                bus.subjects.results("cam0"),
                InferenceResult(frame=frame, model="cls", kind=ModelKind.CLASSIFICATION, instance="i", finished_at=0),
            ),
        ]
        bus.deliver(ROUTER_DURABLE, *frames)
        bus.deliver(ROUTER_CROPS_DURABLE, *results)
        await wait_for(lambda: all(m.acked for m in frames + results), 10, "frames and results acked")
    tasks = bus.sent(bus.subjects.task(heartbeat("cls").subject), InferenceTask)
    assert [(t.frame.seq, t.crop) for t in tasks] == [(0, CropRequest(of="ssd", boxes=[box(0.1, 0.1, 0.4, 0.5)]))]
    assert [t.crop for t in bus.sent(bus.subjects.task(heartbeat("ssd").subject), InferenceTask)] == [
        None
    ]  # the frame, to ssd only
    assert counter_value(router.m_crop_tasks, source_id="cam0", model="cls") == 1
    assert counter_value(router.m_crops, model="cls") == 1


async def test_a_live_frames_crops_are_shed_while_the_classifiers_queue_is_full() -> None:
    async with offline_router(MODELS, classifiers={"cls"}, routing_rules=TO_CLS) as (router, bus):
        router.capacity["cls"] = (1, 20.0)  # 0.1 s of its work: 2 tasks, and 2 are queued
        bus.backlogs[task_stream_name(router.settings, "cls")] = 2
        live = FakeMsg.of(bus.subjects.results("cam0"), detections(("car", 0.9, box(0.1, 0.1, 0.4, 0.5))))
        bus.deliver(ROUTER_CROPS_DURABLE, live)
        await wait_for(lambda: live.acked, 10, "the result acked")
    assert bus.sent(bus.subjects.task(heartbeat("cls").subject), InferenceTask) == []
    assert counter_value(router.m_shed, source_id="cam0", model="cls") == 1


async def test_a_result_whose_crop_task_cannot_be_published_is_given_back() -> None:
    async with offline_router(MODELS, classifiers={"cls"}, routing_rules=TO_CLS) as (_, bus):
        bus.failing.add(bus.subjects.task(heartbeat("cls").subject))
        msg = FakeMsg.of(bus.subjects.results("cam0"), detections(("car", 0.9, box(0.1, 0.1, 0.4, 0.5))))
        bus.deliver(ROUTER_CROPS_DURABLE, msg)
        await wait_for(lambda: msg.naked, 10, "the result given back")
    assert not msg.acked


# -- sub-labels on the tracks ------------------------------------------------------------------------


def crop_result(det_result: InferenceResult, labels: list[tuple[BBox, str, float]]) -> InferenceResult:
    return InferenceResult(
        frame=det_result.frame,
        model="cls",
        kind=ModelKind.CLASSIFICATION,
        instance="i",
        finished_at=time.time(),
        crop_of=det_result.model,
        crops=[CropLabels(box=b, classifications=[Classification(label=n, class_id=0, score=s)]) for b, n, s in labels],
    )


@pytest.mark.parametrize("reorder_depth", [0, 3])
def test_crop_labels_give_each_track_its_majority_sub_label(reorder_depth: int) -> None:
    """With a reorder buffer, a crop's labels come while its frame still waits there: they wait with it."""
    events = EventRules(watch_labels=frozenset({"car"}), min_score=0.5, gap=2.0, max_duration=60.0)
    tracker = ObjectEventTracker(ObjectRules(events=events, min_frames=3, tracker=TrackerSettings(reorder_depth=reorder_depth)))
    cab = Walker(gt=1, x=20, y=150, w=120, h=60, dx=4, label="car")
    van = Walker(gt=2, x=400, y=300, w=120, h=80, dx=-3, label="car")
    sub_labels: dict[str, str | None] = {}
    for n, res in enumerate(scene([cab, van], 12).results):
        for event in tracker.observe(res)[0]:
            sub_labels[event.id] = event.sub_label
        boxes = {round(d.box.x1, 3): d.box for d in res.detections}
        left, right = boxes[min(boxes)], boxes[max(boxes)]
        # The left car reads as a cab in most frames, the right one as a minivan.
        crops = crop_result(res, [(left, "cab" if n % 4 else "police van", 0.6), (right, "minivan", 0.7)])
        for event in tracker.attach_crops(crops):
            sub_labels[event.id] = event.sub_label
    for event in tracker.close_source("cam0"):
        sub_labels[event.id] = event.sub_label
    by_track = {e.track_id: e for e in tracker.open.values()}
    assert by_track == {}  # all closed
    assert sorted(v for v in sub_labels.values() if v) == ["cab", "minivan"]


def test_a_crop_of_a_box_no_track_holds_changes_nothing() -> None:
    events = EventRules(watch_labels=frozenset({"car"}), min_score=0.5, gap=2.0, max_duration=60.0)
    tracker = ObjectEventTracker(ObjectRules(events=events, min_frames=1, tracker=TrackerSettings(reorder_depth=0)))
    res = result(0, [detection((20, 150, 140, 210), label="car")])
    tracker.observe(res)
    assert tracker.attach_crops(crop_result(res, [(box(0.8, 0.8, 0.9, 0.9), "cab", 0.9)])) == []
    assert tracker.attach_crops(crop_result(res, [(res.detections[0].box, "cab", 0.9)]))[0].sub_label == "cab"
    unknown = crop_result(result(0, [], source="cam9"), [(res.detections[0].box, "cab", 0.9)])
    assert tracker.attach_crops(unknown) == []  # no tracker of that source: nothing to attach to


def test_wait_policy_is_carried_into_crop_tasks() -> None:
    res = detections(("car", 0.9, box(0.1, 0.1, 0.4, 0.5)))
    frame = res.frame.model_copy(update={"policy": DropPolicy.WAIT})
    task = InferenceTask(frame=frame, model="cls", routed_at=0, crop=CropRequest(of="ssd", boxes=[box(0, 0, 1, 1)]))
    assert InferenceTask.from_bytes(task.to_bytes()).frame.policy is DropPolicy.WAIT


def test_sub_label_counts_survive_a_restart_with_the_tracker_state() -> None:
    events = EventRules(watch_labels=frozenset({"car"}), min_score=0.5, gap=2.0, max_duration=60.0)
    rules = ObjectRules(events=events, min_frames=3, tracker=TrackerSettings(reorder_depth=0))
    before = ObjectEventTracker(rules)
    cab = Walker(gt=1, x=20, y=150, w=120, h=60, dx=4, label="car")
    results = scene([cab], 6).results
    for res in results[:2]:  # not yet confirmed: the counts live on the track alone
        before.observe(res)
        before.attach_crops(crop_result(res, [(res.detections[0].box, "cab", 0.8)]))
    after = ObjectEventTracker(rules)
    after.load_state("cam0", "ssd", before.state_bytes("cam0", "ssd"))
    opened = [e for res in results[2:] for e in after.observe(res)[0]]
    assert opened and opened[0].sub_label == "cab" and opened[0].sub_label_score == 0.8


async def test_a_crop_rule_on_the_wrong_kinds_of_model_is_logged_once_and_sends_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rules = {
        "cls": {"on": CARS.model_dump()},
        "ssd2": {"on": {"model": "cls", "labels": ["car"]}},
        "x": {"on": {"model": "gone", "labels": ["car"]}},
    }
    with pytest.raises(ValidationError, match="which itself gets crops"):
        settings_from(RouterSettings, routing_rules=rules)
    async with offline_router(
        MODELS,
        classifiers={"cls"},
        routing_rules={"ssd": {"on": {"model": "cls", "labels": ["car"]}}, "x": {"on": {"model": "gone", "labels": ["car"]}}},
        model_grace=0,
    ) as (router, bus):
        router._check_cascades()
        router._check_cascades()
        msg = FakeMsg.of(bus.subjects.results("cam0"), detections(("car", 0.9, box(0.1, 0.1, 0.4, 0.5))))
        bus.deliver(ROUTER_CROPS_DURABLE, msg)
        await wait_for(lambda: msg.acked, 10, "the result acked")
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert sorted(errors) == [
        "routing_rules.ssd has an `on` rule, but ssd is a detection model: crops are classified; no crops for it",
        "routing_rules.ssd.on.model names cls, a classification model: name a detection model; no crops for it",
        "routing_rules.x.on.model names gone, which no live worker serves; no crops for it",
    ]
    assert bus.sent(bus.subjects.task(heartbeat("ssd").subject), InferenceTask) == []
