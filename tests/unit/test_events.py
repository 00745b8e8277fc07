from services.registrator.events import EventRules, EventTracker
from shared.contracts import BBox, Detection, EventClose, EventState, FrameRef, InferenceResult, ModelKind

RULES = EventRules(watch_labels=frozenset({"person"}), min_score=0.5, gap=2.0, max_duration=30.0)


def result(seq: int, *labels: tuple[str, float], source: str = "cam0", fps: float = 10.0) -> InferenceResult:
    dets = [
        Detection.on_image(label, 0, score, BBox(x1=0.1, y1=0.1, x2=0.2 + 0.01 * i, y2=0.4), 10, 10)
        for i, (label, score) in enumerate(labels)
    ]
    ref = FrameRef(
        source_id=source, seq=seq, pts=seq / fps, wall_time=1000 + seq / fps, url=f"http://h/{seq}", width=10, height=10
    )
    return InferenceResult(frame=ref, model="ssd", kind=ModelKind.DETECTION, instance="i", detections=dets, finished_at=0)


def test_an_event_opens_extends_and_closes_after_the_gap() -> None:
    tracker = EventTracker(RULES)
    changed, closed = tracker.observe(result(0, ("person", 0.9)))
    assert [e.state for e in changed] == [EventState.CREATED] and not closed
    changed, _ = tracker.observe(result(1, ("person", 0.8)))
    assert [e.state for e in changed] == [EventState.PENDING]
    changed, _ = tracker.observe(result(2))
    assert changed == []  # nothing seen: nothing extended
    tracker.observe(result(15, ("person", 0.95)))  # 1.3 s gap: still the same event
    _, closed = tracker.observe(result(30))  # 1.5 s after the last sighting
    assert not closed
    _, closed = tracker.observe(result(36))  # 2.1 s: closed
    assert len(closed) == 1
    event = closed[0]
    assert (event.start, event.end, event.frames) == (0.0, 1.5, 3)
    assert event.closed_by is EventClose.GAP and event.record().closed_by is EventClose.GAP
    assert event.best_score == 0.95 and event.best_frame_seq == 15


def test_two_people_in_one_frame_make_one_event() -> None:
    tracker = EventTracker(RULES)
    for seq in range(20):
        tracker.observe(result(seq, ("person", 0.9), ("person", 0.7)))
    closed = tracker.close_source("cam0")
    assert len(closed) == 1
    assert closed[0].label_counts["person"] == 40 and closed[0].frames == 20


def test_low_scores_and_unwatched_labels_open_nothing() -> None:
    tracker = EventTracker(RULES)
    changed, _ = tracker.observe(result(0, ("person", 0.3), ("car", 0.99)))
    assert not changed and not tracker.open


def test_sources_are_separate_and_long_events_split() -> None:
    tracker = EventTracker(RULES)
    tracker.observe(result(0, ("person", 0.9), source="a"))
    tracker.observe(result(0, ("person", 0.9), source="b"))
    assert len(tracker.open) == 2
    closed = []
    for seq in range(1, 320):
        closed += tracker.observe(result(seq, ("person", 0.9), source="a"))[1]
    assert len(closed) == 1 and closed[0].source_id == "a"  # split at 30 s, a new event continues
    assert len(tracker.open) == 2


def test_results_out_of_order_grow_the_span_and_a_late_one_opens_nothing() -> None:
    tracker = EventTracker(RULES)
    tracker.observe(result(5, ("person", 0.9)))
    tracker.observe(result(3, ("person", 0.9)))  # answered late by another replica
    event = tracker.open[("cam0", "ssd", "person")]
    assert (event.start, event.end) == (0.3, 0.5)
    _, closed = tracker.observe(result(40))  # 3.5 s later: closed
    assert len(closed) == 1
    changed, _ = tracker.observe(result(4, ("person", 0.9)))  # a straggler from inside the closed event
    assert changed == [] and not tracker.open and tracker.late == 1
    changed, _ = tracker.observe(result(60, ("person", 0.9)))  # a real new sighting
    assert [e.state for e in changed] == [EventState.CREATED]


def test_a_late_result_does_not_widen_the_next_event_over_the_closed_one() -> None:
    tracker = EventTracker(RULES)  # max_duration 30 s
    for seq in range(0, 301):
        tracker.observe(result(seq, ("person", 0.9)))
    _, closed = tracker.observe(result(301, ("person", 0.9)))  # 30.1 s: split, the next event opens
    assert len(closed) == 1 and closed[0].end == 30.0
    tracker.observe(result(290, ("person", 0.9)))  # redelivered seconds late, from inside the closed event
    following = tracker.open[("cam0", "ssd", "person")]
    assert (following.start, following.end) == (30.1, 30.1) and tracker.late == 1


def test_labels_and_scores_per_model_and_per_source() -> None:
    rules = EventRules(
        watch_labels=frozenset({"person"}),
        min_score=0.5,
        gap=2.0,
        max_duration=30.0,
        per_model={"ssd": {"person": 0.5, "car": 0.6}},
        per_source={("ssd", "gate"): {"person": 0.8}},
    )
    assert rules.threshold("ssd", "cam0", "car") == 0.6 and rules.threshold("ssd", "cam0", "dog") is None
    assert rules.threshold("ssd", "gate", "person") == 0.8 and rules.threshold("ssd", "gate", "car") is None
    assert rules.threshold("other", "cam0", "person") == 0.5  # a model not named: the global watch list
    tracker = EventTracker(rules)
    changed, _ = tracker.observe(result(0, ("car", 0.7), ("person", 0.7), source="gate"))
    assert changed == []  # at the gate only people at 0.8 and above count
    changed, _ = tracker.observe(result(0, ("car", 0.7), ("person", 0.7)))
    assert sorted(e.label for e in changed) == ["car", "person"]


def test_events_whose_results_stopped_close_with_what_they_have() -> None:
    tracker = EventTracker(RULES)
    for seq in range(5):
        tracker.observe(result(seq, ("person", 0.9)))
    tracker.observe(result(3, ("person", 0.9), source="other"))
    closed = tracker.close_quiet("cam0", "ssd", EventClose.NO_RESULTS)
    assert [(e.source_id, e.frames, e.closed_by) for e in closed] == [("cam0", 5, EventClose.NO_RESULTS)]
    _, closed = tracker.observe(result(2, ("person", 0.9)))  # a late one from inside it opens nothing
    assert not closed and not tracker.open.keys() - {("other", "ssd", "person")}
    assert [e.closed_by for e in tracker.close_source("other")] == [EventClose.SOURCE_END]
