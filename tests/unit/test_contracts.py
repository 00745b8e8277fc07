import json

import pytest

from shared.contracts import (
    MAX_MESSAGE_BYTES,
    ContractError,
    Event,
    FrameRef,
    InferenceResult,
    InferenceTask,
    ModelKind,
    SourceHealth,
    SourceState,
    SourceStatus,
    split_feed,
)


def frame(**over: object) -> FrameRef:
    fields = dict(source_id="cam0", seq=3, pts=0.3, wall_time=1.0, url="http://127.0.0.1:8080/3,01", width=768, height=576)
    fields.update(over)
    return FrameRef(**fields)  # type: ignore[arg-type]


def test_two_runs_of_a_source_are_told_apart() -> None:
    first, second = frame(run="r1"), frame(run="r2")  # both seq 3: a reader restarted counts from 0 again
    assert (first.frame_id, first.feed) == ("cam0:r1:3", "cam0@r1")
    assert first.frame_id != second.frame_id and first.msg_id() != second.msg_id()
    assert InferenceTask.id_for(first, "ssd") != InferenceTask.id_for(second, "ssd")
    assert split_feed(second.feed) == ("cam0", "r2") and split_feed(frame().feed) == ("cam0", "")


def test_round_trip_keeps_every_field() -> None:
    ref = frame()
    again = FrameRef.from_bytes(ref.to_bytes())
    assert again == ref
    assert again.frame_id == "cam0:3"
    assert json.loads(ref.to_bytes())["v"] == 1


def test_unknown_field_is_rejected() -> None:
    doc = json.loads(frame().to_bytes())
    doc["surprise"] = 1
    with pytest.raises(ContractError, match="surprise"):
        FrameRef.from_bytes(json.dumps(doc).encode())


def test_other_version_is_rejected() -> None:
    doc = json.loads(frame().to_bytes())
    doc["v"] = 2
    with pytest.raises(ContractError, match="v"):
        FrameRef.from_bytes(json.dumps(doc).encode())


@pytest.mark.parametrize("source_id", ["", "cam.0", "cam 0", "a" * 65, "cam>"])
def test_source_ids_that_would_break_subjects_are_rejected(source_id: str) -> None:
    with pytest.raises(ValueError):
        frame(source_id=source_id)


def test_garbage_and_oversize_messages_raise_contract_errors() -> None:
    with pytest.raises(ContractError):
        FrameRef.from_bytes(b"\x00not json")
    with pytest.raises(ContractError, match="exceeds"):
        SourceStatus.from_bytes(b" " * (MAX_MESSAGE_BYTES + 1))


def test_result_nests_the_frame_it_answers() -> None:
    result = InferenceResult(frame=frame(), model="m", kind=ModelKind.DETECTION, instance="i", finished_at=2.0)
    assert InferenceResult.from_bytes(result.to_bytes()).frame.frame_id == "cam0:3"


def test_a_task_encoded_around_the_frame_json_is_the_same_task() -> None:
    ref = frame()
    encoded = InferenceTask.encode(ref.to_bytes(), 'ssd "v2"', 1795821315.5661154)
    assert InferenceTask.from_bytes(encoded) == InferenceTask(frame=ref, model='ssd "v2"', routed_at=1795821315.5661154)


# One source-state vocabulary for a run's lifecycle (SourceStatus) and its live health (SourceHealth).
_HEALTH = dict(
    source_id="cam0",
    url="rtsp://cam",
    live=True,
    fps=0.0,
    frames_read=0,
    frames_published=0,
    frames_dropped={},
    reconnects=0,
    state_since=1.0,
    updated_at=1.0,
    instance="r1",
)


@pytest.mark.parametrize("value", ["started", "ended", "failed"])
def test_lifecycle_records_already_stored_still_read(value: str) -> None:
    # What the frames stream holds from before the merge: the same JSON, the same message id.
    raw = b'{"v":1,"source_id":"cam0","run":"r1","state":"%s","wall_time":5.0}' % value.encode()
    status = SourceStatus.from_bytes(raw)
    assert status.state is SourceState(value) and status.msg_id() == f"status:cam0@r1:{value}@5.000000"
    assert status.state.final is (value != "started")


@pytest.mark.parametrize("value", ["connecting", "streaming", "stalled", "reconnecting", "ended", "failed"])
def test_health_records_already_stored_still_read(value: str) -> None:
    raw = json.dumps(_HEALTH | {"v": 1, "state": value}).encode()  # as the Redis key `vigil:source:<id>` holds it
    health = SourceHealth.from_bytes(raw)
    assert health.state is SourceState(value) and health.to_bytes() == SourceHealth.from_bytes(health.to_bytes()).to_bytes()


def test_each_message_says_only_what_is_its_to_say() -> None:
    with pytest.raises(ContractError, match="state"):  # a lifecycle has no streaming step
        SourceStatus.from_bytes(b'{"v":1,"source_id":"cam0","state":"streaming","wall_time":5.0}')
    with pytest.raises(ContractError, match="state"):  # a health report never says "started": it says connecting
        SourceHealth.from_bytes(json.dumps(_HEALTH | {"v": 1, "state": "started"}).encode())


@pytest.mark.parametrize("event_id", ["..", "../..", "a/b", "cam0-traffic light-0e0428da6e1d", "", "x" * 129, "cam0-é"])
def test_event_ids_that_are_not_plain_names_are_rejected(event_id: str) -> None:
    record = {
        "id": event_id,
        "source_id": "cam0",
        "model": "ssd",
        "label": "person",
        "label_counts": {"person": 1},
        "state": "FINISHED",
        "start": 0,
        "end": 1,
        "start_wall": 0,
        "frames": 1,
        "best_score": 0.9,
        "best_frame_seq": 0,
        "updated_at": 0,
    }
    with pytest.raises(ContractError, match="id: String should match pattern"):
        Event.from_bytes(json.dumps(record))
    assert Event.from_bytes(json.dumps(record | {"id": "cam0-0e0428da6e1d4c7a"})).id == "cam0-0e0428da6e1d4c7a"
