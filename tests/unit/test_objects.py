"""Per-object events: confirmation, stationary objects, best snapshot, path, zones, sub-labels, restarts."""

from __future__ import annotations

from dataclasses import astuple
from itertools import pairwise

from pydantic import TypeAdapter

from services.registrator.events import EventRules, EventTracker, OpenEvent
from services.registrator.objects import ObjectEventTracker, ObjectRules
from services.registrator.tracking import TrackerSettings
from services.registrator.zones import Line, SourceGeometry, Zone
from shared.contracts import Event, EventClose, EventState, InferenceResult
from tests.support.tracks import EventScore, Walker, crowd, detection, event_score, result, scene

EVENTS = EventRules(watch_labels=frozenset({"person"}), min_score=0.5, gap=2.0, max_duration=60.0)
# The left half of the frame, and a vertical line down its middle.
LEFT = Zone("left", [(0.0, 0.0), (0.5, 0.0), (0.5, 1.0), (0.0, 1.0)])
MIDDLE = Line("middle", (0.5, 1.0), (0.5, 0.0), "right")  # drawn upwards: its right is the right half
GEOMETRY = {"cam0": SourceGeometry(zones=(LEFT,), lines=(MIDDLE,))}


def rules(**overrides: object) -> ObjectRules:
    base: dict[str, object] = dict(events=EVENTS, min_frames=3, min_area=0.001, tracker=TrackerSettings(reorder_depth=0))
    return ObjectRules(**(base | overrides))  # type: ignore[arg-type]


def feed(tracker: ObjectEventTracker, results: list[InferenceResult]) -> tuple[list[OpenEvent], list[OpenEvent]]:
    """All results; (every event ever reported changed, in first-report order, and every closed one)."""
    changed: dict[str, OpenEvent] = {}
    closed: list[OpenEvent] = []
    for res in results:
        c, e = tracker.observe(res)
        changed.update({event.id: event for event in c})
        closed += e
    return list(changed.values()), closed


def walk(*walkers: Walker, frames: int = 60) -> list[InferenceResult]:
    return scene(list(walkers), frames).results


def test_a_track_makes_an_event_once_confirmed() -> None:
    tracker = ObjectEventTracker(rules())
    person = Walker(gt=1, x=20, y=150, w=50, h=120, dx=4)
    results = walk(person, frames=3)
    states = [[e.state for e in tracker.observe(r)[0]] for r in results]
    assert states == [[], [], [EventState.CREATED]]  # the third sighting confirms it
    changed, _ = tracker.observe(walk(person, frames=4)[3])
    assert [e.state for e in changed] == [EventState.PENDING]
    event = changed[0]
    assert event.frames == 4 and event.start == 0.0 and event.track_id == 1  # its first sightings are part of it


def test_weak_and_tiny_detections_never_make_an_event() -> None:
    weak = Walker(gt=1, x=20, y=150, w=50, h=120, dx=4, score=0.4)
    tiny = Walker(gt=2, x=400, y=150, w=10, h=12, dx=1)  # 120 px of 307200: under 0.001 of the frame
    cars = Walker(gt=3, x=200, y=300, w=80, h=60, dx=3, label="car")  # not watched
    changed, _ = feed(ObjectEventTracker(rules()), walk(weak, tiny, cars))
    assert changed == []


def test_two_people_make_two_events_each_closed_after_the_gap() -> None:
    tracker = ObjectEventTracker(rules())
    a = Walker(gt=1, x=20, y=150, w=50, h=120, dx=4, last=29)
    b = Walker(gt=2, x=400, y=100, w=40, h=100, dx=-2)
    changed, closed = feed(tracker, walk(a, b, frames=60))
    assert len(changed) == 2 and {e.track_id for e in changed} == {1, 2}
    assert [e.track_id for e in closed] == [1]  # a left at 2.9 s, closed once 2 s passed without it
    assert closed[0].closed_by is EventClose.GAP and closed[0].end == 2.9
    rest = tracker.close_source("cam0")
    assert [e.track_id for e in rest] == [2] and rest[0].closed_by is EventClose.SOURCE_END


def test_the_best_snapshot_has_the_highest_score_times_area() -> None:
    tracker = ObjectEventTracker(rules())
    results = []
    for seq in range(10):
        # Growing as it comes closer; the score dips on the biggest box, and frame 6 wins on score x area.
        box = (100, 100, 150 + 5 * seq, 250 + 10 * seq)
        score = {6: 0.95, 9: 0.55}.get(seq, 0.7)
        results.append(result(seq, [detection(box, score)]))
    changed, _ = feed(tracker, results)
    (event,) = changed
    assert event.best_frame_seq == 6 and event.best_score == 0.95 and event.best_frame_url == "http://h/6"
    assert event.best_box == results[6].detections[0].box and event.best_detections == [results[6].detections[0]]
    record = event.record()
    assert record.best_box == event.best_box and record.track_id == 1


def test_the_path_is_bounded_and_evenly_thinned() -> None:
    tracker = ObjectEventTracker(rules(path_max_points=8))
    person = Walker(gt=1, x=10, y=150, w=50, h=120, dx=5)
    changed, _ = feed(tracker, walk(person, frames=100))
    (event,) = changed
    path = event.record().path
    assert 5 <= len(path) <= 9
    times = [p[0] for p in path]
    steps = {round(b - a, 3) for a, b in pairwise(times[:-1])}
    assert len(steps) == 1, steps  # evenly spaced, bar the latest sighting at the end
    assert times[0] == 0.0 and times[-1] == 9.9  # from the first sighting to the last
    xs = [p[1] for p in path]
    assert xs == sorted(xs)  # it walks right


def test_zones_entered_and_lines_crossed() -> None:
    tracker = ObjectEventTracker(rules(geometry=GEOMETRY))
    right_walker = Walker(gt=1, x=100, y=150, w=50, h=120, dx=8)  # from the left half to the right
    changed, _ = feed(tracker, walk(right_walker, frames=60))
    (event,) = changed
    assert event.zones == ["left"] and event.record().zones == ["left"]
    assert tracker.take_crossings("cam0") == {("cam0", "middle", "person", "in"): 1}
    assert tracker.take_crossings("cam0") == {}  # taken
    back = ObjectEventTracker(rules(geometry=GEOMETRY))
    feed(back, walk(Walker(gt=1, x=500, y=150, w=50, h=120, dx=-8), frames=60))
    assert back.take_crossings("cam0") == {("cam0", "middle", "person", "out"): 1}


def test_a_required_zone_admits_only_objects_that_enter_it() -> None:
    tracker = ObjectEventTracker(rules(geometry=GEOMETRY, require_zones={"ssd": frozenset({"left"})}))
    stays_right = Walker(gt=1, x=400, y=150, w=50, h=120, dx=1)
    comes_left = Walker(gt=2, x=420, y=300, w=40, h=100, dx=-6)  # its feet reach x < 0.5 at about frame 20
    changed, _ = feed(tracker, walk(stays_right, comes_left, frames=60))
    (event,) = changed
    assert event.track_id == 2 and event.zones == ["left"]
    assert event.start == 0.0  # the event covers the object from its first sighting, as Frigate's do
    # A source that does not define the zone is not filtered.
    other = ObjectEventTracker(rules(require_zones={"ssd": frozenset({"left"})}))
    assert len(feed(other, walk(stays_right))[0]) == 1


def test_a_required_zone_admits_each_event_of_a_track_on_its_own_sightings() -> None:
    # Found on the sample video: a track whose event had closed came back elsewhere (ByteTrack had moved its id
    # onto another person) and opened an event outside the required zone, on the strength of its first one.
    # Here: a person walks from the left half into the right, parks there until its event closes, and walks on.
    tracker = ObjectEventTracker(rules(geometry=GEOMETRY, require_zones={"ssd": frozenset({"left"})}, stationary_after=3.0))
    results = []
    for seq in range(200):
        x = 100 + 10 * min(seq, 30) + (seq % 2) + 4 * max(0, seq - 150)
        results.append(result(seq, [detection((x, 200, x + 50, 320), 0.9, "person")]))
    changed, closed = feed(tracker, results)
    (event,) = changed  # the walk on from the right half entered no required zone: no second event
    assert event.zones == ["left"] and event.stationary and event in closed
    # The same scene without the rule gives the second event, so the rule is what held it back.
    unfiltered, _ = feed(ObjectEventTracker(rules(geometry=GEOMETRY, stationary_after=3.0)), results)
    assert [e.zones for e in unfiltered] == [["left"], []]


def test_an_excluded_zone_masks_detections() -> None:
    tracker = ObjectEventTracker(rules(geometry=GEOMETRY, exclude_zones={"ssd": frozenset({"left"})}))
    in_mask = Walker(gt=1, x=20, y=150, w=50, h=120, dx=1)
    outside = Walker(gt=2, x=420, y=150, w=50, h=120, dx=1)
    changed, _ = feed(tracker, walk(in_mask, outside))
    assert [e.zones for e in changed] == [[]] and changed[0].best_box is not None and changed[0].best_box.x1 > 0.5


def test_a_stationary_object_stops_its_event_and_alerts_once() -> None:
    tracker = ObjectEventTracker(rules(stationary_after=3.0))
    # Parks at frame 20 (2 s) and stays, jittering a pixel, until frame 150; then drives off.
    results = []
    for seq in range(200):
        x = 10 + 10 * min(seq, 20) + (seq % 2) + 4 * max(0, seq - 150)
        results.append(result(seq, [detection((x, 200, x + 80, 260), 0.9, "person")]))
    changed, closed = feed(tracker, results[:150])
    (parked,) = changed
    assert parked.stationary and parked in closed and parked.closed_by is EventClose.GAP
    assert parked.end < 2.0 + 3.0 + 0.2  # it stopped extending once stationary (3 s after it stopped)
    assert parked.record().stationary
    changed, _ = feed(tracker, results[150:])
    (moving,) = changed  # it moved: a new event of the same track, not stationary
    assert moving.id != parked.id and moving.track_id == parked.track_id and not moving.stationary
    assert moving.start >= 15.0


def test_sub_labels_take_the_majority_over_the_track() -> None:
    tracker = ObjectEventTracker(rules())
    car = Walker(gt=1, x=20, y=150, w=80, h=60, dx=4)
    results = walk(car, frames=10)
    feed(tracker, results[:2])
    track_id = tracker.track_for("cam0", "ssd", 1, results[1].detections[0].box)
    assert track_id == 1
    assert tracker.attach_sub_label("cam0", "ssd", 1, "minivan", 0.6) is None  # not an event yet
    changed, _ = feed(tracker, results[2:])
    (event,) = changed
    assert event.sub_label == "minivan"  # what it gathered before confirmation counts
    assert tracker.attach_sub_label("cam0", "ssd", 1, "pickup", 0.9) is event  # a tie: the higher total score
    assert event.sub_label == "pickup"
    assert tracker.attach_sub_label("cam0", "ssd", 1, "minivan", 0.5) is event
    assert (event.sub_label, event.sub_label_score) == ("minivan", 0.55)
    assert tracker.attach_sub_label("cam0", "ssd", 99, "cab", 0.9) is None  # no such track


def test_state_saved_mid_sequence_gives_the_same_events_after_a_restart() -> None:
    a = Walker(gt=1, x=40, y=200, w=60, h=150, dx=9)
    b = Walker(gt=2, x=560, y=180, w=40, h=100, dx=-9)
    results = walk(a, b, frames=60)
    settings = rules(geometry=GEOMETRY, tracker=TrackerSettings(reorder_depth=4))

    def finish(tracker: ObjectEventTracker, rest: list[InferenceResult]) -> list[Event]:
        _, closed = feed(tracker, rest)
        closed += tracker.close_source("cam0")
        return sorted((e.record() for e in closed), key=lambda e: e.track_id or 0)

    whole = ObjectEventTracker(settings)
    expected = finish(whole, results)
    crossings = whole.take_crossings("cam0")

    before = ObjectEventTracker(settings)
    feed(before, results[:25])
    assert before.take_dirty("cam0") == {("cam0", "ssd")} and before.take_dirty("cam0") == set()  # what to save, once
    saved = before.state_bytes("cam0", "ssd")
    open_events = list(before.open.values())
    assert open_events and all(e.track_id is not None for e in open_events)
    after = ObjectEventTracker(settings)
    after.load_state("cam0", "ssd", saved)
    for event in open_events:
        after.adopt(event)
    got = finish(after, results[25:])
    ignore = {"id", "updated_at", "start_wall"}
    assert [e.model_dump(exclude=ignore) for e in got] == [e.model_dump(exclude=ignore) for e in expected]
    assert before.take_crossings("cam0") + after.take_crossings("cam0") == crossings


def test_records_of_scene_events_keep_the_defaults() -> None:
    event = OpenEvent(id="cam0-1", source_id="cam0", model="ssd", label="person", start=0, end=1, start_wall=0)
    record = event.record()
    assert (record.track_id, record.sub_label, record.path, record.zones, record.stationary, record.best_box) == (
        None,
        None,
        [],
        [],
        False,
        None,
    )


def test_a_new_track_where_a_lost_one_vanished_continues_its_event() -> None:
    # ByteTrack keeps a lost track 0.5 s here; the person is out of sight 1 s (under the 2 s gap) and comes back
    # where it was: ByteTrack gives a new id, the event goes on.
    person = Walker(gt=1, x=20, y=150, w=50, h=120, dx=2)
    results = scene([person], 60, [(1, seq) for seq in range(20, 30)]).results
    stitched = ObjectEventTracker(rules(tracker=TrackerSettings(reorder_depth=0, lost_seconds=0.5)))
    changed, _ = feed(stitched, results)
    (event,) = changed
    # 50 sightings but the new track's first: ByteTrack names a new track from its second frame.
    assert event.frames == 49 and (event.start, event.end) == (0.0, 5.9)
    assert stitched.stitched[("cam0", "ssd")] == {2: 1} and event.track_id == 1
    apart = ObjectEventTracker(rules(stitch_heights=0.0, tracker=TrackerSettings(reorder_depth=0, lost_seconds=0.5)))
    assert [e.track_id for e in feed(apart, results)[0]] == [1, 2]


def test_a_track_seen_beside_the_lost_one_or_far_from_it_is_another_object() -> None:
    settings = rules(tracker=TrackerSettings(reorder_depth=0, lost_seconds=0.5))
    leaves = Walker(gt=1, x=300, y=150, w=50, h=120, dx=0.5, last=25)
    beside = Walker(gt=2, x=330, y=200, w=50, h=120, dx=0.5, first=20)  # seen while the first still was
    far = Walker(gt=3, x=20, y=150, w=50, h=120, dx=0.5, first=30)  # appears after, but 5 heights away
    changed, _ = feed(ObjectEventTracker(settings), walk(leaves, beside, far))
    assert len(changed) == 3


def test_the_saved_state_stays_small_on_a_long_run() -> None:
    # Saved with every batch of results: it must not grow with the run.
    tracker = ObjectEventTracker(rules(tracker=TrackerSettings(reorder_depth=8)))
    walkers = [Walker(gt=i, x=20 + 110 * i, y=100 + 20 * i, w=40, h=100, dx=0.3 * (-1) ** i) for i in range(5)]
    results = scene(walkers, 1200).results
    feed(tracker, results[:300])
    early = len(tracker.state_bytes("cam0", "ssd"))
    feed(tracker, results[300:])
    late = len(tracker.state_bytes("cam0", "ssd"))
    assert late < 24_000 and late < early * 1.2, (early, late)


def test_the_scene_tracker_has_the_same_surface() -> None:
    scene_tracker = EventTracker(EVENTS)
    assert scene_tracker.flush("cam0", "ssd") == ([], [])
    assert scene_tracker.take_dirty("cam0") == set() and scene_tracker.take_crossings("cam0") == {}
    event = OpenEvent(id="cam0-1", source_id="cam0", model="ssd", label="person", start=0, end=1, start_wall=0)
    scene_tracker.adopt(event)
    assert scene_tracker.open == {("cam0", "ssd", "person"): event}


def test_an_object_event_survives_the_registrators_saved_form() -> None:
    # state.py keeps open events as TypeAdapter(OpenEvent) JSON: the new fields must come back as they were.
    tracker = ObjectEventTracker(rules(geometry=GEOMETRY, path_max_points=4))
    changed, _ = feed(tracker, walk(Walker(gt=1, x=100, y=150, w=50, h=120, dx=8), frames=30))
    (event,) = changed
    tracker.attach_sub_label("cam0", "ssd", 1, "minivan", 0.7)
    adapter = TypeAdapter(OpenEvent)
    back = adapter.validate_json(adapter.dump_json(event))
    assert back == event and back.record().model_dump(exclude={"updated_at"}) == event.record().model_dump(exclude={"updated_at"})
    assert back.path_tail is not None or back.path_skipped == 0


def crowd_events(stitch_heights: float) -> EventScore:
    """The eight seeded crowds of test_tracking.py (64 people) as per-object events, scored against the truth."""
    totals = EventScore(0, 0, 0)
    for seed in range(8):
        sc = crowd(seed)
        tracker = ObjectEventTracker(rules(stitch_heights=stitch_heights))
        changed, closed = feed(tracker, sc.results)
        events = {e.id: e for e in [*changed, *closed, *tracker.close_source("cam0")]}
        got = event_score(sc, {event_id: event.record().path for event_id, event in events.items()})
        totals = EventScore(*(a + b for a, b in zip(astuple(totals), astuple(got), strict=True)))
    return totals


def test_crowds_give_an_event_per_person_within_the_measured_bounds() -> None:
    # Measured (docs/tracking.md): stitching a new track to the event of a lost one where it vanished saves
    # fragments (6 -> 4) at the price of merges (4 -> 7) in these crowds, where people cross often; on the
    # sample video, where ByteTrack loses people behind others and the sign post, it halves the events (58 -> 30).
    stitched, unstitched = crowd_events(1.0), crowd_events(0.0)
    assert stitched.missed == unstitched.missed == 0  # nobody seen for 3 frames goes without an event
    assert stitched.fragments <= 4 and stitched.merged <= 7, stitched
    assert unstitched.fragments <= 6 and unstitched.merged <= 4, unstitched
    assert stitched.fragments < unstitched.fragments  # what stitching is for


def test_a_source_saves_only_its_own_tracker_state_and_crossings() -> None:
    """Each source's state is written in its own transaction, under its own lease: a batch of cam0 must not take
    cam1's tracker (cam1 may be moving, and its results' windows be written only in its own transaction)."""
    tracker = ObjectEventTracker(rules())
    for seq in range(3):
        for source in ("cam0", "cam1"):
            tracker.observe(result(seq, [detection((100, 100, 160, 250))], source=source))
    assert tracker.take_dirty("cam0") == {("cam0", "ssd")}
    assert tracker.take_dirty("cam0") == set()
    assert tracker.take_dirty("cam1") == {("cam1", "ssd")}
