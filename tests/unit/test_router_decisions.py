"""The router's decisions, without servers: which tasks a frame becomes, what is counted and summarised.

The service runs its real `run()` on tests/support/fake_bus.py, with its live models given and its routed counts
kept in memory (RoutedCounts keeps them in Redis, once per frame; tests/integration covers that). Only the
public behaviour is pinned here: tasks per live model and rule, acks, counts and the routing summary.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from services.router import service as router_service
from services.router.rules import ModelRule
from shared.contracts import (
    DropPolicy,
    FrameRef,
    InferenceTask,
    RoutingSummary,
    SourceState,
    SourceStatus,
)
from shared.metrics import counter_value
from shared.subjects import ROUTER_DURABLE, task_stream_name
from tests.support.fake_bus import FakeBus, FakeMsg
from tests.support.offline_router import heartbeat, offline_router


async def until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


def frame_msgs(bus: FakeBus, source_id: str, count: int, policy: DropPolicy = DropPolicy.DROP_OLDEST) -> list[FakeMsg]:
    return [
        FakeMsg.of(
            bus.subjects.frames(source_id),
            FrameRef(
                source_id=source_id,
                seq=seq,
                pts=seq / 10,
                wall_time=time.time(),
                url="http://x/1,01",
                width=4,
                height=4,
                policy=policy,
            ),
        )
        for seq in range(count)
    ]


def tasks_for(bus: FakeBus, model: str) -> list[InferenceTask]:
    return bus.sent(bus.subjects.task(heartbeat(model).subject), InferenceTask)


async def test_each_frame_becomes_one_task_per_live_model_and_is_acked() -> None:
    async with offline_router(["ssd", "cls"]) as (router, bus):
        msgs = frame_msgs(bus, "cam0", 5)
        bus.deliver(ROUTER_DURABLE, *msgs)
        await until(lambda: all(m.acked for m in msgs), "the frames acked")
    for model in ("ssd", "cls"):
        tasks = tasks_for(bus, model)
        assert [(t.model, t.frame.source_id, t.frame.seq) for t in tasks] == [(model, "cam0", seq) for seq in range(5)]
        assert counter_value(router.m_tasks, source_id="cam0", model=model) == 5
    assert router.frames_total == 5 and counter_value(router.m_frames, source_id="cam0") == 5


async def test_a_rule_keeps_a_model_to_its_sources_and_every_nth_frame() -> None:
    rules = {"cls": ModelRule(sources=["cam1"], every_nth=2)}
    async with offline_router(["ssd", "cls"], routing_rules=rules) as (router, bus):
        msgs = frame_msgs(bus, "cam0", 4) + frame_msgs(bus, "cam1", 4)
        bus.deliver(ROUTER_DURABLE, *msgs)
        await until(lambda: all(m.acked for m in msgs), "the frames acked")
    assert len(tasks_for(bus, "ssd")) == 8  # no rule: every frame
    assert [(t.frame.source_id, t.frame.seq) for t in tasks_for(bus, "cls")] == [("cam1", 0), ("cam1", 2)]
    assert counter_value(router.m_skipped, model="cls") == 6


async def test_frames_without_a_live_model_are_acked_and_counted_unrouted() -> None:
    async with offline_router([]) as (router, bus):
        msgs = frame_msgs(bus, "cam0", 3)
        bus.deliver(ROUTER_DURABLE, *msgs)
        await until(lambda: all(m.acked for m in msgs), "the frames acked")
    assert bus.published == []
    assert counter_value(router.m_unrouted, source_id="cam0") == 3


async def test_a_frame_whose_task_cannot_be_published_is_given_back_uncounted() -> None:
    async with offline_router(["ssd"]) as (router, bus):
        bus.failing.add(bus.subjects.task(heartbeat("ssd").subject))  # NATS away past every retry
        msgs = frame_msgs(bus, "cam0", 2)
        bus.deliver(ROUTER_DURABLE, *msgs)
        await until(lambda: all(m.naked for m in msgs), "the frames given back")
    assert not any(m.acked for m in msgs)  # redelivered later, and routed then
    assert router.frames_total == 0 and counter_value(router.m_failed, model="ssd") == 2


async def test_a_bad_frame_reference_is_dead_lettered_and_the_rest_routed() -> None:
    async with offline_router(["ssd"]) as (_, bus):
        bad = FakeMsg(bus.subjects.frames("cam0"), b'{"source_id": "cam0"}')
        msgs = [bad, *frame_msgs(bus, "cam0", 2)]
        bus.deliver(ROUTER_DURABLE, *msgs)
        await until(lambda: all(m.acked for m in msgs), "the frames acked")
    assert [subject for subject, _, _ in bus.dead_letters] == [bus.subjects.frames("cam0")]
    assert len(tasks_for(bus, "ssd")) == 2


async def test_an_ended_source_is_summarised_with_what_was_routed() -> None:
    async with offline_router(["ssd", "cls"], routing_rules={"cls": ModelRule(every_nth=3)}) as (_, bus):
        frames = frame_msgs(bus, "cam0", 6)
        status = SourceStatus(
            source_id="cam0", state=SourceState.ENDED, wall_time=time.time(), frames_read=6, frames_published=6, last_seq=5
        )
        ended = FakeMsg.of(bus.subjects.source_status("cam0"), status)
        bus.deliver(ROUTER_DURABLE, *frames, ended)
        await until(lambda: ended.acked, "the summary")  # the status is acked once its summary is out
    (summary,) = bus.sent(bus.subjects.routed("cam0"), RoutingSummary)
    assert (summary.frames_routed, summary.tasks) == (6, {"ssd": 6, "cls": 2})


async def test_a_wait_frame_holds_while_its_models_queue_is_full() -> None:
    async with offline_router(["ssd"], task_backlog_limit=4) as (router, bus):
        stream = task_stream_name(router.settings, "ssd")
        bus.backlogs[stream] = 4  # the worker's queue is at the limit
        (held,) = frame_msgs(bus, "cam0", 1, DropPolicy.WAIT)
        bus.deliver(ROUTER_DURABLE, held)
        await until(lambda: counter_value(router.m_waits, model="ssd") == 1, "the frame waiting")
        assert tasks_for(bus, "ssd") == [] and not held.acked
        bus.backlogs[stream] = 0  # the worker caught up
        await until(lambda: held.acked, "the frame routed")
    assert len(tasks_for(bus, "ssd")) == 1


async def test_live_frames_are_shed_while_their_models_queue_holds_its_live_backlog_seconds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # One reading serves the whole test, so that the fixed backlog below is the only one the router sees.
    monkeypatch.setattr(router_service, "_LIVE_READING_SECONDS", 3600.0)
    async with offline_router(["ssd", "cls"], live_backlog_seconds=0.1) as (router, bus):
        # ssd: one instance at 40 frames/s, so 0.1 s of work is 4 tasks, and 1 is queued. cls: two instances at
        # 5 frames/s together, so 2 each at least (not 1), and its queue is full.
        router.capacity.update({"ssd": (1, 40.0), "cls": (2, 5.0)})
        bus.backlogs[task_stream_name(router.settings, "ssd")] = 1
        bus.backlogs[task_stream_name(router.settings, "cls")] = 4
        live = frame_msgs(bus, "cam0", 5)
        (waits,) = frame_msgs(bus, "file", 1, DropPolicy.WAIT)  # a file's frame is never shed
        status = SourceStatus(
            source_id="cam0", state=SourceState.ENDED, wall_time=time.time(), frames_read=5, frames_published=5, last_seq=4
        )
        ended = FakeMsg.of(bus.subjects.source_status("cam0"), status)
        bus.deliver(ROUTER_DURABLE, *live, ended, waits)
        await until(lambda: ended.acked and waits.acked, "the summary and the file's frame")
    assert all(m.acked for m in live)  # shed frames are routed frames: counted, acked, never given back
    assert [(t.frame.source_id, t.frame.seq) for t in tasks_for(bus, "ssd")] == [
        ("cam0", 0),
        ("cam0", 1),
        ("cam0", 2),
        ("file", 0),
    ]
    assert [t.frame.source_id for t in tasks_for(bus, "cls")] == ["file"]
    assert counter_value(router.m_shed, source_id="cam0", model="ssd") == 2
    assert counter_value(router.m_shed, source_id="cam0", model="cls") == 5
    (summary,) = bus.sent(bus.subjects.routed("cam0"), RoutingSummary)
    assert (summary.frames_routed, summary.tasks, summary.shed) == (5, {"ssd": 3}, {"ssd": 2, "cls": 5})


@pytest.mark.parametrize(
    ("why", "capacity", "seconds"),
    [
        ("restarting: its frames wait for it (issue 15)", None, 0.1),
        ("just started: no rate measured yet", (1, 0.0), 0.1),
        ("shedding turned off", (1, 40.0), 0.0),
    ],
)
async def test_live_frames_are_queued_for_a_model_without_a_measured_rate_or_with_shedding_off(
    why: str, capacity: tuple[int, float] | None, seconds: float
) -> None:
    async with offline_router(["ssd"], live_backlog_seconds=seconds) as (router, bus):
        if capacity is not None:
            router.capacity["ssd"] = capacity
        bus.backlogs[task_stream_name(router.settings, "ssd")] = 500
        msgs = frame_msgs(bus, "cam0", 5)
        bus.deliver(ROUTER_DURABLE, *msgs)
        await until(lambda: all(m.acked for m in msgs), "the frames acked")
    assert len(tasks_for(bus, "ssd")) == 5 and counter_value(router.m_shed, source_id="cam0", model="ssd") == 0
