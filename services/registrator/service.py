"""Registrator: results become events; closed events get a proof clip and key frame; ended sources drain."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nats.aio.msg import Msg
from nats.js import JetStreamContext

from services.registrator.clips import clip_ticks, pick_frames
from services.registrator.events import EventRules, EventTracker, OpenEvent
from services.registrator.frames import FrameRing
from services.registrator.proofs import make_proofs
from services.registrator.retention import sweep
from services.registrator.settings import RegistratorSettings
from services.registrator.store import EventStore
from shared.bus import fetch
from shared.contracts import (
    EventState,
    FrameRef,
    InferenceResult,
    ModelKind,
    RoutingSummary,
    SourceDrained,
    SourceState,
    SourceStatus,
)
from shared.keys import RedisKeys
from shared.lifecycle import Service
from shared.storage import SeaweedStorage
from shared.subjects import (
    REGISTRATOR_FRAMES_DURABLE,
    REGISTRATOR_RESULTS_DURABLE,
    frames_stream_name,
    results_stream,
    results_stream_name,
)

_FRAME_WAIT_SECONDS = 10.0
_RECORD_REFRESH_SECONDS = 1.0


@dataclass
class SourceProgress:
    """What the registrator knows of one source, to tell when all its results are in."""

    ended: bool = False
    summary: RoutingSummary | None = None
    summary_at: float = 0.0
    seen: defaultdict[str, set[int]] = field(default_factory=lambda: defaultdict(set))
    result_pts: dict[str, float] = field(default_factory=dict)
    finalising: set[asyncio.Task[None]] = field(default_factory=set)
    events: int = 0
    draining: bool = False

    def complete(self) -> bool:
        if not self.ended or self.summary is None:
            return False
        return all(len(self.seen.get(model, ())) >= n for model, n in self.summary.tasks.items())


class RegistratorService(Service[RegistratorSettings]):
    name = "registrator"

    def __init__(self, settings: RegistratorSettings) -> None:
        super().__init__(settings)
        self.keys = RedisKeys(settings)
        self.tracker = EventTracker(
            EventRules(
                watch_labels=frozenset(settings.watch_labels),
                min_score=settings.min_score,
                gap=settings.event_gap,
                max_duration=settings.max_event_duration,
            )
        )
        self.ring = FrameRing(settings.ring_max_frames)
        self.sources: defaultdict[str, SourceProgress] = defaultdict(SourceProgress)
        self.finalising: dict[str, OpenEvent] = {}
        self.store: EventStore | None = None
        self.storage: SeaweedStorage | None = None
        self._finalise_slots = asyncio.Semaphore(settings.finalise_concurrency)
        self._tasks: set[asyncio.Task[None]] = set()
        self.m_results = self.metrics.counter("results", "results absorbed", ("source_id", "model"))
        self.m_duplicates = self.metrics.counter("duplicate_results", "results seen before (redelivery)", ("model",))
        self.m_events = self.metrics.counter("events", "events by final state", ("source_id", "state"))
        self.m_finalise = self.metrics.histogram("finalise", "time to cut and store an event's proofs")

    async def start(self, stack: AsyncExitStack) -> None:
        await self.open_bus(stack)
        await self.bus.ensure_stream(results_stream(self.settings))
        redis = await self.open_redis(stack)
        self.store = EventStore(redis, self.keys)
        self.storage = await self.open_storage(stack)

    def health(self) -> dict[str, Any]:
        return super().health() | {
            "open_events": len(self.tracker.open),
            "finalising": len(self.finalising),
            "ring_frames": len(self.ring),
        }

    async def run(self) -> None:
        results_sub = await self.bus.durable_pull(results_stream_name(self.settings), REGISTRATOR_RESULTS_DURABLE)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._consume(results_sub, self._on_results_msg))
            tg.create_task(self._watch_drain_timeouts())
            if self.settings.event_retention_days > 0:
                tg.create_task(self._retention())
            frames_sub = await self.bus.bind_when_ready(
                frames_stream_name(self.settings), REGISTRATOR_FRAMES_DURABLE, self.stop_event
            )
            if frames_sub is not None:
                tg.create_task(self._consume(frames_sub, self._on_frames_msg))
        # Events still open at shutdown keep their PENDING record; finalising ones are finished first.
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=20)

    async def _consume(self, sub: JetStreamContext.PullSubscription, handle: Any) -> None:
        while not self.stop_event.is_set():
            for msg in await fetch(sub, 256, timeout=0.5):
                await handle(msg)

    # -- frames and source lifecycle -------------------------------------------------------------

    async def _on_frames_msg(self, msg: Msg) -> None:
        if self.bus.subjects.is_source_status(msg.subject):
            status = await self.bus.decode(msg, SourceStatus)
            if status is not None and status.state in (SourceState.ENDED, SourceState.FAILED):
                self.sources[status.source_id].ended = True
                self._check_drained(status.source_id)
        else:
            ref = await self.bus.decode(msg, FrameRef)
            if ref is not None:
                self.ring.add(ref)
        await msg.ack()

    # -- results ---------------------------------------------------------------------------------

    async def _on_results_msg(self, msg: Msg) -> None:
        if self.bus.subjects.is_routed(msg.subject):
            summary = await self.bus.decode(msg, RoutingSummary)
            if summary is not None:
                progress = self.sources[summary.source_id]
                progress.summary, progress.summary_at = summary, time.monotonic()
                self._check_drained(summary.source_id)
        else:
            result = await self.bus.decode(msg, InferenceResult)
            if result is not None:
                await self._absorb(result)
        # Acked only after its effect (event records) is in Redis: a restart loses nothing.
        await msg.ack()

    async def _absorb(self, result: InferenceResult) -> None:
        frame = result.frame
        progress = self.sources[frame.source_id]
        seen = progress.seen[result.model]
        if frame.seq in seen:
            self.m_duplicates.labels(model=result.model).inc()
            return
        seen.add(frame.seq)
        self.m_results.labels(source_id=frame.source_id, model=result.model).inc()
        progress.result_pts[result.model] = max(progress.result_pts.get(result.model, 0.0), frame.pts)
        if result.kind is ModelKind.DETECTION and result.error is None:
            changed, closed = self.tracker.observe(result)
            assert self.store is not None
            now = time.time()
            for event in changed:
                first = event.state is EventState.CREATED
                if first:
                    progress.events += 1
                    self.log.info("event %s opened at %.1f s", event.id, event.start, extra={"source_id": frame.source_id})
                # Every transition is saved; a growing event's record is refreshed at most once a second.
                if first or event.frames == 2 or now - event.saved_at >= _RECORD_REFRESH_SECONDS:
                    event.saved_at = now
                    await self.store.save(event.record())
            for event in closed:
                await self._close(event)
        self._prune(frame.source_id)
        self._check_drained(frame.source_id)

    def _prune(self, source_id: str) -> None:
        """Keep the frames any open or finalising event, or one about to open, may still need."""
        progress = self.sources[source_id]
        if not progress.result_pts:
            return
        horizon = min(progress.result_pts.values()) - self.settings.event_gap
        pinned = [e.start for e in self.finalising.values() if e.source_id == source_id]
        oldest_open = self.tracker.oldest_start(source_id)
        if oldest_open is not None:
            pinned.append(oldest_open)
        horizon = min([horizon, *pinned]) - self.settings.pre_roll - 1.0
        self.ring.prune_before(source_id, horizon)

    # -- closing and proofs ----------------------------------------------------------------------

    async def _close(self, event: OpenEvent) -> None:
        assert self.store is not None
        event.state = EventState.DONE
        await self.store.save(event.record())
        self.finalising[event.id] = event
        task = asyncio.create_task(self._finalise(event))
        self.sources[event.source_id].finalising.add(task)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _finalise(self, event: OpenEvent) -> None:
        """First attempt, awaited by a draining source; if storage fails, the event says ERROR and retries go on."""
        assert self.store is not None
        try:
            chosen = await self._select_frames(event)
        except Exception as exc:  # noqa: BLE001 - nothing to cut: no retry can help
            await self._failed(event, exc)
            self.finalising.pop(event.id, None)
            return
        if not await self._attempt(event, chosen):
            retry = asyncio.create_task(self._retry(event, chosen))
            self._tasks.add(retry)
            retry.add_done_callback(self._tasks.discard)

    async def _retry(self, event: OpenEvent, chosen: list[FrameRef]) -> None:
        delay = 1.0
        for _ in range(self.settings.finalise_retries):
            try:
                await asyncio.wait_for(self.stop_event.wait(), timeout=delay)
                return  # stopping: the record keeps saying ERROR with its reason
            except asyncio.TimeoutError:
                pass
            if await self._attempt(event, chosen):
                return
            delay = min(delay * 2, 30.0)
        self.finalising.pop(event.id, None)

    async def _attempt(self, event: OpenEvent, chosen: list[FrameRef]) -> bool:
        assert self.store is not None and self.storage is not None
        started = time.perf_counter()
        try:
            async with self._finalise_slots:
                proofs = await make_proofs(self.storage, Path(self.settings.TMP_PATH), event, chosen, self.settings.clip_fps)
        except Exception as exc:  # noqa: BLE001 - recorded on the event, retried
            await self._failed(event, exc)
            return False
        event.state = EventState.FINISHED
        await self.store.save(event.record(**proofs))
        self.finalising.pop(event.id, None)
        self.m_events.labels(source_id=event.source_id, state=EventState.FINISHED.value).inc()
        self.m_finalise.observe(time.perf_counter() - started)
        self.log.info(
            "event %s FINISHED: %s, %.1f-%.1f s, %d frames, clip of %d frames",
            event.id, event.label, event.start, event.end, event.frames, proofs["clip_frames"],
            extra={"source_id": event.source_id},
        )
        return True

    async def _failed(self, event: OpenEvent, exc: BaseException) -> None:
        assert self.store is not None
        event.state = EventState.ERROR
        self.m_events.labels(source_id=event.source_id, state=EventState.ERROR.value).inc()
        self.log.error("event %s has no proofs yet: %r", event.id, exc, extra={"source_id": event.source_id})
        await self.store.save(event.record(error=f"{type(exc).__name__}: {exc}"[:500]))

    async def _select_frames(self, event: OpenEvent) -> list[FrameRef]:
        """The frame shown at each clip tick, chosen once: retries reuse it even after the ring has moved on."""
        s = self.settings
        progress = self.sources[event.source_id]
        start, end = max(0.0, event.start - s.pre_roll), event.end + s.post_roll
        # Live sources: the post-roll frames may not have arrived yet.
        deadline = time.monotonic() + _FRAME_WAIT_SECONDS
        while not progress.ended and (self.ring.latest_pts(event.source_id) or 0.0) < end and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        latest = self.ring.latest_pts(event.source_id)
        if latest is None:
            raise RuntimeError("no frames of the source are buffered")
        end = min(end, latest)
        return pick_frames(self.ring.window(event.source_id, start, end), clip_ticks(start, end, s.clip_fps))

    # -- draining ended sources ------------------------------------------------------------------

    def _check_drained(self, source_id: str, *, timed_out: bool = False) -> None:
        progress = self.sources[source_id]
        if progress.draining or not (progress.complete() or (timed_out and progress.ended)):
            return
        progress.draining = True
        task = asyncio.create_task(self._drain(source_id, timed_out))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _drain(self, source_id: str, timed_out: bool) -> None:
        progress = self.sources[source_id]
        summary = progress.summary
        results = {model: len(seqs) for model, seqs in progress.seen.items()}
        if timed_out:
            self.log.warning(
                "source drained after %.0f s without all results: routed %s, got %s",
                self.settings.drain_timeout, summary.tasks if summary else "?", results, extra={"source_id": source_id},
            )
        for event in self.tracker.close_source(source_id):
            await self._close(event)
        if progress.finalising:
            await asyncio.wait(progress.finalising)
        drained = SourceDrained(
            source_id=source_id,
            frames_routed=summary.frames_routed if summary else 0,
            tasks=summary.tasks if summary else {},
            results=results,
            events=progress.events,
            wall_time=time.time(),
        )
        await self.bus.publish_core(self.bus.subjects.drained(source_id), drained)
        self.log.info("source drained: %d event(s), results %s", progress.events, results, extra={"source_id": source_id})
        self.ring.forget(source_id)
        del self.sources[source_id]

    async def _retention(self) -> None:
        assert self.store is not None and self.storage is not None
        max_age = self.settings.event_retention_days * 86400
        while not self.stop_event.is_set():
            try:
                await sweep(self.store, self.storage, Path(self.settings.TMP_PATH), max_age)
            except Exception as exc:  # noqa: BLE001 - Redis or storage away: the next sweep tries again
                self.log.warning("retention sweep failed: %r", exc)
            try:
                await asyncio.wait_for(self.stop_event.wait(), timeout=self.settings.retention_interval)
            except asyncio.TimeoutError:
                pass

    async def _watch_drain_timeouts(self) -> None:
        while not self.stop_event.is_set():
            await asyncio.sleep(1.0)
            now = time.monotonic()
            for source_id, progress in list(self.sources.items()):
                waited = now - progress.summary_at
                if progress.summary is not None and not progress.draining and waited > self.settings.drain_timeout:
                    self._check_drained(source_id, timed_out=True)
