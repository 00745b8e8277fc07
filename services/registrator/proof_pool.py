"""The proof pool: each closed event's proofs (clip and key frames) are cut by a job in the service's task group.

Jobs run inside the task group so that nothing outlives the service: at stop they get `HANDOVER_SECONDS` together,
then the rest are cancelled (each stays DONE in the saved state, and the next holder of its source cuts it). At
most `finalise_concurrency` jobs cut at once, the others wait their turn, first come first served: the CPU goes
to clips, never to more of them than the machine can encode. A job that fails leaves its event ERROR and retries
with backoff; a job never takes the service down with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import Counter, Histogram

from services.registrator.clips import ClipFrames, plan_clip, segment_span
from services.registrator.events import OpenEvent
from services.registrator.lifecycle import Lifecycle
from services.registrator.notices import Notices
from services.registrator.proofs import make_proofs
from services.registrator.settings import RegistratorSettings
from services.registrator.sources import SourceBook
from services.registrator.state import RegistratorState
from shared.contracts import EventClose, EventState
from shared.event_store import EventStore
from shared.lifecycle import Stopping
from shared.metrics import Metrics
from shared.storage import SeaweedStorage

FRAME_WAIT_SECONDS = 10.0  # how long an event's frames, and a live source's post-roll, are waited for
HANDOVER_SECONDS = 20.0  # proofs being cut when a source is given up (or the service stops) get this long


@dataclass(frozen=True)
class ProofMetrics:
    events: Counter
    finalise: Histogram

    @classmethod
    def register(cls, metrics: Metrics) -> ProofMetrics:
        return cls(
            events=metrics.counter(
                "events", "events reaching FINISHED, or ERROR (once per failed attempt)", ("source_id", "state")
            ),
            finalise=metrics.histogram("finalise", "time to cut and store an event's proofs"),
        )


class ProofPool:
    def __init__(
        self,
        life: Lifecycle,
        settings: RegistratorSettings,
        book: SourceBook,
        store: EventStore,
        state: RegistratorState,
        storage: SeaweedStorage | None,  # None only where no proof is ever cut (the unit tests of decisions)
        notices: Notices,
        metrics: ProofMetrics,
        group: asyncio.TaskGroup,
    ) -> None:
        self.life = life
        self.settings = settings
        self.book = book
        self.store = store
        self.state = state
        self.storage = storage
        self.notices = notices
        self.metrics = metrics
        self.group = group
        self.slots = asyncio.Semaphore(settings.finalise_concurrency)
        self.jobs: set[asyncio.Task[None]] = set()  # every job in flight, first tries and retries

    def submit(self, event: OpenEvent) -> None:
        """A closed event (its DONE record saved) gets its proofs cut."""
        self.book.finalising[event.id] = event
        self._job(event, self._finalise(event))

    async def run(self) -> None:
        """At stop, the jobs in flight get HANDOVER_SECONDS together, then the rest are cancelled."""
        await self.life.stop_event.wait()
        deadline = time.monotonic() + HANDOVER_SECONDS
        while self.jobs and (left := deadline - time.monotonic()) > 0:
            await asyncio.wait(set(self.jobs), timeout=left)
        for job in list(self.jobs):
            job.cancel()

    def _job(self, event: OpenEvent, work: Coroutine[Any, Any, None]) -> None:
        """A first try or a retry: a draining source waits for all of them (an event closed by a storage outage gets
        its proofs once storage is back, not ERROR at the drain); each is forgotten when done."""
        task = self.group.create_task(self._guarded(event, work))
        pending = self.book.sources[event.feed].finalising
        for tasks in (pending, self.jobs):
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    async def _guarded(self, event: OpenEvent, work: Coroutine[Any, Any, None]) -> None:
        try:
            await work
        except Exception:
            self.life.log.exception("proof job of event %s failed", event.id, extra={"source_id": event.source_id})

    async def _finalise(self, event: OpenEvent) -> None:
        """First attempt, awaited by a draining source; if storage fails, the event says ERROR and retries go on."""
        try:
            chosen = await self._select_frames(event)
        except Stopping:
            return
        except Exception as exc:  # noqa: BLE001 - nothing to cut: no retry can help
            await self._failed(event, exc)
            await self._forget(event)
            return
        if not await self._attempt(event, chosen):
            self._job(event, self._retry(event, chosen))

    async def _retry(self, event: OpenEvent, chosen: ClipFrames) -> None:
        delay = 1.0
        for _ in range(self.settings.finalise_retries):
            if await self.life.pause(delay):
                return  # stopping: the record keeps saying ERROR with its reason
            if await self._attempt(event, chosen):
                return
            delay = min(delay * 2, 30.0)
        await self._forget(event)

    async def _attempt(self, event: OpenEvent, chosen: ClipFrames) -> bool:
        assert self.storage is not None
        started = time.perf_counter()
        try:
            async with self.slots:
                proofs = await make_proofs(self.storage, Path(self.settings.TMP_PATH), event, chosen, self.settings.clip_fps)
        except Exception as exc:  # noqa: BLE001 - recorded on the event, retried
            await self._failed(event, exc)
            return False
        event.state = EventState.FINISHED
        record = event.record(**proofs)
        try:
            await self.life.redis_must("finished event", lambda: self.store.save(record))
        except Stopping:
            return True  # the event stays DONE in the saved state: the next start cuts its proofs again
        await self.notices.publish(record)
        await self._forget(event)
        self.metrics.events.labels(source_id=event.source_id, state=EventState.FINISHED.value).inc()
        self.metrics.finalise.observe(time.perf_counter() - started)
        self.life.log.info(
            "event %s FINISHED: %s, %.1f-%.1f s, %d frames, clip of %d frames",
            event.id,
            event.label,
            event.start,
            event.end,
            event.frames,
            proofs["clip_frames"],
            extra={"source_id": event.source_id},
        )
        return True

    async def _forget(self, event: OpenEvent) -> None:
        self.book.finalising.pop(event.id, None)
        # Stopping: a restart finds its record FINISHED and its saved state: it cuts the proofs once more.
        with contextlib.suppress(Stopping):
            await self.life.redis_must("forget event", lambda: self.state.drop(event))

    async def _failed(self, event: OpenEvent, exc: BaseException) -> None:
        event.state = EventState.ERROR
        self.metrics.events.labels(source_id=event.source_id, state=EventState.ERROR.value).inc()
        self.life.log.error("event %s has no proofs yet: %r", event.id, exc, extra={"source_id": event.source_id})
        await self.store.save(record := event.record(error=f"{type(exc).__name__}: {exc}"[:500]))
        await self.notices.publish(record)

    async def _select_frames(self, event: OpenEvent) -> ClipFrames:
        """The frame shown at each clip tick, chosen once: retries reuse it even after the ring has moved on."""
        s, ring = self.settings, self.book.ring
        progress = self.book.sources[event.feed]
        start, end = segment_span(max(0.0, event.start - s.pre_roll), event.end + s.post_roll, s.clip_fps)
        # After a restart or a move the frames streamed before it are still being read back into the buffer.
        held = self.book.held.get(event.source_id)
        if held is None:
            raise Stopping("the source moved to another replica")
        while not held.ring_ready.is_set():
            if await self.life.pause(0.2):
                raise Stopping("frames for proofs")
        # The event's own frames, up to its last sighting, were published before their results, but this replica's
        # frames consumer can run behind its results consumer (a loaded machine): they are waited for, whatever closed
        # the event. Live sources: so are the post-roll frames (not from a dark camera: it sends no more).
        deadline = time.monotonic() + FRAME_WAIT_SECONDS
        post_roll = not progress.ended and event.closed_by is not EventClose.NO_FRAMES
        wanted = end if post_roll else min(end, event.end)
        while ((latest := ring.latest_pts(event.feed)) is None or latest < wanted) and time.monotonic() < deadline:
            if await self.life.pause(0.2):
                raise Stopping("the event's frames")
        if latest is None:
            raise RuntimeError("no frames of the source are buffered")
        end = min(end, latest)
        return plan_clip(ring.window(event.feed, start, end), start, end, s.clip_fps)
