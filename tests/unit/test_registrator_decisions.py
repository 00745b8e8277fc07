"""The registrator's decisions on the bus, without servers: when a source is drained, and what it counts.

The service runs its real `run()` on tests/support/fake_bus.py (messages in, publishes recorded) and a
write-only Redis (tests/support/fake_redis.py). Its start, which opens the real connections, is skipped.
tests/integration/test_registrator.py runs the same service against real NATS, Redis and SeaweedFS.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from services.registrator.service import RegistratorService
from services.registrator.settings import RegistratorSettings
from services.registrator.state import RegistratorState
from shared.contracts import (
    FrameRef,
    InferenceResult,
    ModelKind,
    RoutingSummary,
    SourceDrained,
    SourceState,
    SourceStatus,
)
from shared.event_store import EventStore
from shared.keys import RedisKeys
from shared.metrics import counter_value
from shared.subjects import registrator_frames_durable, registrator_results_durable
from tests.support.fake_bus import FakeBus, FakeMsg
from tests.support.fake_redis import FakeRedis, SoleHolder
from tests.support.settings import settings_from

MODEL = "ssd"
FRAMES, RESULTS = registrator_frames_durable("cam0"), registrator_results_durable("cam0")


@asynccontextmanager
async def offline_registrator() -> AsyncIterator[tuple[RegistratorService, FakeBus]]:
    # No storage here, so no retention (tests/integration/test_registrator.py runs it).
    settings = settings_from(RegistratorSettings, subject_prefix="unit", event_retention_days=0, event_storage_max_gb=0)
    service = RegistratorService(settings)
    bus = FakeBus(service.settings, "registrator")
    redis = FakeRedis()
    service.bus = bus  # type: ignore[assignment]
    service.store = EventStore(redis, RedisKeys(service.settings))  # type: ignore[arg-type]
    service.state = RegistratorState(redis, RedisKeys(service.settings))  # type: ignore[arg-type]
    service.leases = SoleHolder(redis)  # type: ignore[assignment]
    task = asyncio.create_task(service.run())
    try:
        yield service, bus
    finally:
        service.stop_event.set()
        await asyncio.wait_for(task, 10)


async def settle(*msgs: FakeMsg) -> None:
    """Until the service has handled (acked) these messages."""
    await until(lambda: all(m.acked for m in msgs), "the messages handled")


async def until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


def frame(seq: int, run: str = "r1") -> FrameRef:
    return FrameRef(
        source_id="cam0", run=run, seq=seq, pts=seq / 10, wall_time=time.time(), url="http://x/1,01", width=4, height=4
    )


def result_msg(bus: FakeBus, seq: int, run: str = "r1") -> FakeMsg:
    # No detections: these tests are about counting and draining, not about events (tests/unit/test_events.py).
    result = InferenceResult(frame=frame(seq, run), model=MODEL, kind=ModelKind.DETECTION, instance="w", finished_at=time.time())
    return FakeMsg.of(bus.subjects.results("cam0"), result)


def status_msg(bus: FakeBus, state: SourceState, run: str = "r1", published: int = 0) -> FakeMsg:
    status = SourceStatus(
        source_id="cam0",
        run=run,
        state=state,
        wall_time=time.time(),
        frames_read=published,
        frames_published=published,
        last_seq=max(published - 1, 0),
    )
    return FakeMsg.of(bus.subjects.source_status("cam0"), status)


def summary_msg(bus: FakeBus, tasks: int, run: str = "r1") -> FakeMsg:
    summary = RoutingSummary(source_id="cam0", run=run, frames_routed=tasks, tasks={MODEL: tasks}, wall_time=time.time())
    return FakeMsg.of(bus.subjects.routed("cam0"), summary)


def drained(bus: FakeBus) -> list[SourceDrained]:
    return bus.sent(bus.subjects.drained("cam0"), SourceDrained)


async def test_an_ended_source_drains_once_its_last_routed_result_is_in() -> None:
    async with offline_registrator() as (_, bus):
        ended, summary = status_msg(bus, SourceState.ENDED, published=3), summary_msg(bus, 3)
        first_two = [result_msg(bus, seq) for seq in (0, 1)]
        bus.deliver(FRAMES, ended)
        bus.deliver(RESULTS, summary, *first_two)
        await settle(ended, summary, *first_two)
        assert drained(bus) == []  # the router routed 3 tasks: one result is still owed

        bus.deliver(RESULTS, result_msg(bus, 2))
        await until(lambda: bool(drained(bus)), "the drain")
    (done,) = drained(bus)
    assert (done.run, done.frames_routed, done.tasks, done.results, done.events) == ("r1", 3, {MODEL: 3}, {MODEL: 3}, 0)


async def test_a_redelivered_result_is_counted_once() -> None:
    async with offline_registrator() as (service, bus):
        again = [result_msg(bus, 0), result_msg(bus, 0)]  # a redelivery: the same frame and model
        bus.deliver(RESULTS, result_msg(bus, 1), *again)
        bus.deliver(FRAMES, status_msg(bus, SourceState.ENDED, published=2))
        bus.deliver(RESULTS, summary_msg(bus, 2))
        await until(lambda: bool(drained(bus)), "the drain")
        assert counter_value(service.m_duplicates, model=MODEL) == 1
    assert drained(bus)[0].results == {MODEL: 2}


async def test_a_new_run_of_a_source_drains_the_run_that_never_ended() -> None:
    async with offline_registrator() as (_, bus):
        # Run r1's reader was killed: no ENDED, no routing summary. Run r2 starts.
        results = [result_msg(bus, seq, run="r1") for seq in range(4)]
        bus.deliver(RESULTS, *results)
        await settle(*results)
        assert drained(bus) == []
        bus.deliver(FRAMES, status_msg(bus, SourceState.STARTED, run="r2"))
        await until(lambda: bool(drained(bus)), "the old run's drain")
    (done,) = drained(bus)
    assert (done.run, done.frames_routed, done.tasks, done.results) == ("r1", 0, {}, {MODEL: 4})  # what it got


async def test_a_late_copy_of_a_drained_runs_result_is_dropped_as_stale() -> None:
    async with offline_registrator() as (service, bus):
        first = result_msg(bus, 0)
        bus.deliver(RESULTS, first)
        bus.deliver(FRAMES, status_msg(bus, SourceState.ENDED, published=1))
        bus.deliver(RESULTS, summary_msg(bus, 1))
        await until(lambda: bool(drained(bus)), "the drain")
        # A copy of it (its frame read before the run ended) from past the stream's duplicate window.
        bus.deliver(RESULTS, FakeMsg(first.subject, first.data))
        await until(lambda: counter_value(service.m_stale, model=MODEL) == 1, "the copy dropped")
        assert not service.sources  # it brought the drained run back neither as progress...
    assert len(drained(bus)) == 1  # ...nor as a second drain


async def test_a_bad_result_is_dead_lettered_and_the_next_is_counted() -> None:
    async with offline_registrator() as (service, bus):
        bad, good = FakeMsg(bus.subjects.results("cam0"), b"{not json"), result_msg(bus, 0)
        bus.deliver(RESULTS, bad, good)
        await settle(bad, good)
        assert [(subject, data) for subject, data, _ in bus.dead_letters] == [(bus.subjects.results("cam0"), b"{not json")]
        assert counter_value(service.m_results, source_id="cam0", model=MODEL) == 1
