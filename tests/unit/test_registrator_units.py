"""The registrator's units on their own, without servers: forgetting and dropping a source (sources.SourceBook),
and the proof pool's place in the task group (proof_pool.ProofPool).

tests/unit/test_registrator_decisions.py drives the whole service on a fake bus; the integration tests run it on the
real servers. These pin what only the units decide: a source forgotten leaves nothing of it behind, and a proof job
never outlives the service nor takes its task group down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import pytest

from services.registrator import proof_pool, recovery
from services.registrator.closing import EventCloser
from services.registrator.draining import Drainer
from services.registrator.events import EventRules, EventTracker, OpenEvent
from services.registrator.frames import FrameRing
from services.registrator.notices import Notices
from services.registrator.proof_pool import ProofMetrics, ProofPool
from services.registrator.settings import RegistratorSettings
from services.registrator.sources import HeldSource, SourceBook
from services.registrator.state import RegistratorState
from shared.contracts import Event, EventClose, EventState, FrameRef
from shared.event_store import EventStore
from shared.keys import RedisKeys
from shared.metrics import Metrics
from shared.pause import sleep_unless_stopped
from tests.support.fake_bus import FakeBus
from tests.support.fake_redis import FakeRedis, SoleHolder
from tests.support.settings import settings_from

T = TypeVar("T")
SETTINGS = settings_from(RegistratorSettings, subject_prefix="unit", event_mode="scene")


class Life:
    """The running service as the units see it (services/registrator/lifecycle.py), with Redis always there."""

    def __init__(self) -> None:
        self.stop_event = asyncio.Event()
        self.log = logging.getLogger("vigil.registrator")

    async def pause(self, seconds: float) -> bool:
        return await sleep_unless_stopped(self.stop_event, seconds)

    async def redis_must(self, what: str, attempt: Callable[[], Awaitable[T]], *, hold: Sequence[Any] = ()) -> T:
        return await attempt()


class StuckStorage:
    """A filer that never answers: a proof job cutting from it waits until it is cancelled."""

    def __init__(self) -> None:
        self.asked = asyncio.Event()
        self.cancelled = False

    async def download(self, url: str) -> bytes:
        self.asked.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        return b""


class RefusingStore:
    """An event store whose writes fail with something other than Redis being away (redis_must retries that)."""

    async def save(self, record: Event) -> None:
        raise PermissionError("NOPERM this user has no permissions to run the 'evalsha' command")


def book_of(leases: SoleHolder) -> SourceBook:
    return SourceBook(EventTracker(EventRules.from_settings(SETTINGS)), FrameRing(100), leases)  # type: ignore[arg-type]


def event(source_id: str, event_id: str = "e1") -> OpenEvent:
    return OpenEvent(
        id=event_id, source_id=source_id, model="ssd", label="person", start=0.0, end=1.0, start_wall=time.time(), run="r1"
    )


def frame(source_id: str, seq: int) -> FrameRef:
    return FrameRef(
        source_id=source_id, run="r1", seq=seq, pts=seq / 10, wall_time=time.time(), url=f"http://x/{seq},01", width=4, height=4
    )


def remember(book: SourceBook, source_id: str) -> None:
    """Everything the book keeps of one source run: progress, clocks, a late-copy mark, a frame, an event being cut."""
    feed = f"{source_id}@r1"
    book.held[source_id] = HeldSource(source_id)
    book.sources[feed].events = 1
    book.last_result[(feed, "ssd")] = time.monotonic()
    book.drained_until[f"{source_id}@r0"] = time.time()
    book.unpaced.add(feed)
    book.ring.add(frame(source_id, 0))
    book.finalising[f"{source_id}-e"] = event(source_id, f"{source_id}-e")


def test_end_times_of_runs_long_drained_expire_per_source() -> None:
    """A camera that reconnects starts a run each time: the end times kept to tell late copies must not pile up."""
    book = book_of(SoleHolder(FakeRedis()))
    book.drained_until |= {"cam0@r0": 100.0, "cam0@r1": 200.0, "cam0@r2": 900.0, "cam1@r0": 100.0}
    assert book.expire_ended("cam0", before=500.0) == ["cam0@r0", "cam0@r1"]
    assert book.drained_until == {"cam0@r2": 900.0, "cam1@r0": 100.0}  # another source's wait for its own drain
    assert book.expire_ended("cam0", before=500.0) == []


def test_forgetting_a_source_leaves_nothing_of_it_and_keeps_the_others() -> None:
    book = book_of(SoleHolder(FakeRedis()))
    remember(book, "cam0")
    remember(book, "cam1")
    book.forget_source("cam0")
    assert list(book.held) == ["cam1"] and list(book.sources) == ["cam1@r1"]
    assert [feed for feed, _ in book.last_result] == ["cam1@r1"] and list(book.drained_until) == ["cam1@r0"]
    assert book.unpaced == {"cam1@r1"} and list(book.finalising) == ["cam1-e"]
    assert book.ring.latest_pts("cam0@r1") is None and book.ring.latest_pts("cam1@r1") == 0.0


async def test_a_dropped_source_stops_at_once_and_lets_go_of_its_token() -> None:
    leases = SoleHolder(FakeRedis())
    book = book_of(leases)
    remember(book, "cam0")
    held = book.held["cam0"]
    await leases.acquire("cam0")
    proof = asyncio.create_task(asyncio.Event().wait())
    book.sources["cam0@r1"].finalising.add(proof)
    book.drop("cam0")
    with contextlib.suppress(asyncio.CancelledError):
        await proof  # the cancellation lands
    assert held.stop.is_set() and proof.cancelled()
    assert "cam0" not in book.held and not book.sources
    assert leases.tokens == {}  # no later write of this replica passes the fence with it


@asynccontextmanager
async def pool_in_a_group(life: Life, book: SourceBook, store: Any, storage: Any) -> AsyncIterator[ProofPool]:
    """A proof pool in a task group, as RegistratorService.run wires it; the group ends once the test stops it."""
    redis = FakeRedis()
    keys = RedisKeys(SETTINGS)
    notices = Notices(FakeBus(SETTINGS, "registrator"), SETTINGS.notify_update_interval, Metrics("unit"))  # type: ignore[arg-type]
    metrics = ProofMetrics.register(Metrics("unit"))
    async with asyncio.timeout(10), asyncio.TaskGroup() as group:
        state = RegistratorState(redis, keys)  # type: ignore[arg-type]
        pool = ProofPool(life, SETTINGS, book, store, state, storage, notices, metrics, group)
        group.create_task(pool.run())
        yield pool


async def test_a_proof_job_gets_the_handover_at_stop_then_is_cancelled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(proof_pool, "HANDOVER_SECONDS", 0.3)
    life, book, storage = Life(), book_of(SoleHolder(FakeRedis())), StuckStorage()
    book.held["cam0"] = HeldSource("cam0")
    book.held["cam0"].ring_ready.set()
    book.sources["cam0@r1"].ended = True  # no post-roll to wait for
    for seq in range(20):
        book.ring.add(frame("cam0", seq))
    closed = event("cam0")
    closed.state = EventState.DONE
    async with pool_in_a_group(life, book, EventStore(FakeRedis(), RedisKeys(SETTINGS)), storage) as pool:  # type: ignore[arg-type]
        pool.submit(closed)
        await asyncio.wait_for(storage.asked.wait(), 5)  # cutting: its frames are being downloaded
        stopped = time.monotonic()
        life.stop_event.set()
    # The group ended: the job was cancelled after the handover, not waited for (the filer never answers).
    assert storage.cancelled and not pool.jobs and not book.sources["cam0@r1"].finalising
    assert 0.3 <= time.monotonic() - stopped < 5
    assert "e1" in book.finalising  # still owed its proofs: DONE in the saved state, the next holder cuts them


async def test_a_proof_job_that_fails_is_logged_and_the_task_group_goes_on(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(proof_pool, "FRAME_WAIT_SECONDS", 0.2)  # its frames never come: not worth the full wait
    life, book = Life(), book_of(SoleHolder(FakeRedis()))
    book.held["cam0"] = HeldSource("cam0")
    book.held["cam0"].ring_ready.set()
    book.sources["cam0@r1"].ended = True
    # No frame buffered: the event gets ERROR, and its ERROR record cannot be written either.
    async with pool_in_a_group(life, book, RefusingStore(), StuckStorage()) as pool:
        # Stands for the consumers: a failed job must not cancel them.
        released = asyncio.Event()
        sibling = pool.group.create_task(released.wait())
        pool.submit(event("cam0"))
        await asyncio.wait_for(asyncio.gather(*pool.jobs), 5)
        assert not sibling.done()
        released.set()
        life.stop_event.set()
    assert await sibling  # it ran to its end, not cancelled
    assert "proof job of event e1 failed" in caplog.text and "NOPERM" in caplog.text


class WatchedLife(Life):
    """Says when a proof job first pauses, waiting for frames."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting = asyncio.Event()

    async def pause(self, seconds: float) -> bool:
        self.waiting.set()
        return await super().pause(seconds)


@pytest.mark.parametrize("ended", [False, True])
async def test_an_event_waits_for_its_own_frames_when_they_lag_its_results(ended: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    # On a loaded machine the frames consumer can run behind the results consumer: an event closed for want of
    # results (NO_FRAMES: no post-roll to wait for), or at its source's end, finds only some of its frames buffered.
    # Its clip waits for the rest, up to its last sighting (pts 1.0), instead of being cut short or failing for good.
    monkeypatch.setattr(proof_pool, "HANDOVER_SECONDS", 0.3)  # the stuck download is cancelled at the end
    life, book, storage = WatchedLife(), book_of(SoleHolder(FakeRedis())), StuckStorage()
    book.held["cam0"] = HeldSource("cam0")
    book.held["cam0"].ring_ready.set()
    book.sources["cam0@r1"].ended = ended
    for seq in range(4):  # up to pts 0.3
        book.ring.add(frame("cam0", seq))
    closed = event("cam0")
    closed.state, closed.closed_by = EventState.DONE, EventClose.NO_FRAMES
    async with pool_in_a_group(life, book, EventStore(FakeRedis(), RedisKeys(SETTINGS)), storage) as pool:  # type: ignore[arg-type]
        pool.submit(closed)
        await asyncio.wait_for(life.waiting.wait(), 5)
        assert not storage.asked.is_set()  # nothing cut from the frames to pts 0.3
        for seq in range(4, 12):
            book.ring.add(frame("cam0", seq))
        await asyncio.wait_for(storage.asked.wait(), 5)  # now cutting
        life.stop_event.set()


class Unnoticed:
    """Notices go nowhere: the fake bus has no JetStream for them."""

    async def publish(self, record: Event) -> None:
        return None


class SlowHolder(SoleHolder):
    """Holds every fenced write (an event's DONE record) until the test lets it through."""

    def __init__(self, redis: FakeRedis) -> None:
        super().__init__(redis)
        self.gate = asyncio.Event()
        self.held = asyncio.Event()

    async def write_fenced(self, source_id: str, fill: Callable[[Any], Awaitable[None]]) -> None:
        self.held.set()
        await self.gate.wait()
        await super().write_fenced(source_id, fill)


async def test_a_drain_waits_for_an_event_whose_record_is_being_saved(monkeypatch: pytest.MonkeyPatch) -> None:
    # Found beside CPU burners: an event closed quiet was out of the tracker but not yet a proof job while its DONE
    # record was saved; the source's drain, running meanwhile, saw nothing to wait for, said drained and forgot the
    # frames, and the proofs then failed for good ("no frames of the source are buffered").
    monkeypatch.setattr(proof_pool, "HANDOVER_SECONDS", 0.3)
    life, redis = Life(), FakeRedis()
    leases = SlowHolder(redis)
    book, storage = book_of(leases), StuckStorage()
    book.held["cam0"] = HeldSource("cam0")
    book.held["cam0"].ring_ready.set()
    feed = "cam0@r1"
    book.sources[feed].ended = True
    for seq in range(20):
        book.ring.add(frame("cam0", seq))
    bus = FakeBus(SETTINGS, "registrator")
    keys = RedisKeys(SETTINGS)
    store = EventStore(redis, keys)  # type: ignore[arg-type]
    async with pool_in_a_group(life, book, store, storage) as pool:
        state = RegistratorState(redis, keys)  # type: ignore[arg-type]
        closer = EventCloser(life, book, store, state, leases, Unnoticed(), pool)  # type: ignore[arg-type]
        drainer = Drainer(life, SETTINGS, bus, book, state, closer, pool.group)  # type: ignore[arg-type]
        quiet = event("cam0")  # as close_quiet has it: out of the tracker, being closed
        closing = asyncio.create_task(closer.close(quiet))
        await asyncio.wait_for(leases.held.wait(), 5)  # its record is being saved
        drain = asyncio.create_task(drainer._drain(feed, timed_out=False))
        # Everything here is in memory: a drain that did not wait would be done at once, long before this bound.
        await asyncio.wait({drain}, timeout=0.5)
        assert not drain.done() and feed in book.sources  # waiting, the frames kept
        leases.gate.set()
        await closing
        await asyncio.wait_for(storage.asked.wait(), 5)  # its proofs are being cut from the frames kept
        assert not drain.done()  # and the drain waits for them
        life.stop_event.set()
    drain.cancel()


def test_frames_are_read_back_as_far_as_their_jpegs_last() -> None:
    """Behind a pipeline running minutes late, the results still to come and the events saved open are of frames read
    long before the move, which the previous holder acked: every frame whose JPEG still exists is read back, far more
    than an event and its pre-roll span."""
    now = 10_000.0
    settings = settings_from(RegistratorSettings, subject_prefix="unit", ttl_bucket="5m", max_event_duration=20)
    since = recovery.rebuild_since(now, settings)
    assert since == now - 300
    assert since < now - 3 * (settings.max_event_duration + settings.pre_roll + settings.post_roll)
