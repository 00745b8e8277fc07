"""Registrator: results become events; closed events get a proof clip and key frame; ended sources drain."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter, defaultdict
from collections.abc import Coroutine
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from services.registrator.clips import clip_ticks, pick_frames
from services.registrator.events import EventRules, EventTracker, OpenEvent
from services.registrator.frames import FrameRing
from services.registrator.notices import Notices
from services.registrator.proofs import make_proofs
from services.registrator.retention import Removed, size_unsized, sweep, sweep_budget
from services.registrator.settings import RegistratorSettings
from services.registrator.state import RegistratorState
from services.registrator.window import Seen, SeenWindow
from shared.bus import ConsumerLag, fetch
from shared.contracts import (
    DropPolicy,
    EventClose,
    EventState,
    FrameRef,
    InferenceResult,
    ModelKind,
    RoutingSummary,
    SourceDrained,
    SourceState,
    SourceStatus,
    split_feed,
)
from shared.event_store import EventStore
from shared.keys import TOTAL_ERRORS, TOTAL_EVENTS, TOTAL_INFERRED, RedisKeys
from shared.lifecycle import Service, Stopping
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
_REBUILD_MARGIN = 30.0
_LAG_CHECK_SECONDS = 2.0


@dataclass
class SourceProgress:
    """What the registrator knows of one source, to tell when all its results are in."""

    ended: bool = False
    ended_at: float = 0.0  # wall time of the source's ENDED (or FAILED) status
    summary: RoutingSummary | None = None
    summary_at: float = 0.0
    windows: dict[str, SeenWindow] = field(default_factory=dict)  # per model: which results were absorbed
    result_pts: dict[str, float] = field(default_factory=dict)
    finalising: set[asyncio.Task[None]] = field(default_factory=set)
    events: int = 0
    draining: bool = False

    def complete(self) -> bool:
        if not self.ended or self.summary is None:
            return False
        return all(self.absorbed(model) >= n for model, n in self.summary.tasks.items())

    def absorbed(self, model: str) -> int:
        window = self.windows.get(model)
        return window.count if window is not None else 0


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
                per_model={model: rule.labels for model, rule in settings.event_rules.items() if rule.labels},
                per_source={
                    (model, source): scores
                    for model, rule in settings.event_rules.items()
                    for source, scores in rule.sources.items()
                },
            )
        )
        self.ring = FrameRing(settings.ring_max_frames)
        self.notices = Notices(self.bus, settings.notify_update_interval, self.metrics)  # event notices, for the notifier
        self.sources: defaultdict[str, SourceProgress] = defaultdict(SourceProgress)
        # Per drained source, when its run ended: a result of a frame read before that is a late copy.
        self.drained_until: dict[str, float] = {}
        # When (monotonic) the last result of each (source, model) arrived. On a live source an event whose results
        # stopped closes after event_gap of this clock (issue 15: a dark camera or a dead detector left it open
        # until its frames expired).
        self._last_result: dict[tuple[str, str], float] = {}
        # Files read as fast as possible (WAIT): their results come when the workers get to them, so their events
        # close by stream time only.
        self._unpaced: set[str] = set()
        self.finalising: dict[str, OpenEvent] = {}
        self.store: EventStore | None = None
        self.state: RegistratorState  # set in start(), with Redis
        self._resumed = False
        self._owed: list[OpenEvent] = []
        self._ring_ready = asyncio.Event()  # set once the frame buffer holds what was streamed before a restart
        self.lag: ConsumerLag | None = None
        self.storage: SeaweedStorage | None = None
        self._finalise_slots = asyncio.Semaphore(settings.finalise_concurrency)
        self._tasks: set[asyncio.Task[None]] = set()
        self.m_results = self.metrics.counter("results", "results absorbed", ("source_id", "model"))
        self.m_duplicates = self.metrics.counter("duplicate_results", "results seen before (redelivery)", ("model",))
        self.m_stale = self.metrics.counter("stale_results", "results of a run already drained (dropped)", ("model",))
        self.m_past = self.metrics.counter(
            "past_window_results", "results more than dedup_window_frames behind the newest (taken for seen)", ("model",)
        )
        self.m_events = self.metrics.counter(
            "events", "events reaching FINISHED, or ERROR (once per failed attempt)", ("source_id", "state")
        )
        self.m_finalise = self.metrics.histogram("finalise", "time to cut and store an event's proofs")
        self.m_pending = self.metrics.gauge("results_pending", "results waiting to be absorbed (JetStream's count)")
        self.m_oldest = self.metrics.gauge("results_oldest_seconds", "age of the oldest result not yet absorbed")
        self.m_retained = self.metrics.counter("retention_removed", "events removed with their files", ("reason",))
        self.m_retained_bytes = self.metrics.counter("retention_removed_bytes", "proof bytes removed", ("reason",))
        self.m_stored = self.metrics.gauge("events_stored_bytes", "bytes of the events' proofs in the filer, by their records")

    async def start(self, stack: AsyncExitStack) -> None:
        await self.open_bus(stack)
        await self.bus.ensure_stream(results_stream(self.settings))
        redis = await self.open_redis(stack)
        self.store = EventStore(redis, self.keys)
        # Records written before the listing indexes existed: indexed once, before anything new is written.
        if (indexed := await self.store.backfill_indexes()) is not None:
            self.log.info("listing indexes built over %d existing event record(s)", indexed)
        self.state = RegistratorState(redis, self.keys)
        self._owed = await self._restore()
        # Last: tests (and the harness) take an open storage for "started", so the saved state is back by then.
        self.storage = await self.open_storage(stack)

    def health(self) -> dict[str, Any]:
        s, lag = self.settings, self.lag
        lagging = lag is not None and (lag.pending > s.results_lag_max_pending or lag.oldest_age > s.results_lag_max_age)
        doc = super().health() | {
            "open_events": len(self.tracker.open),
            "finalising": len(self.finalising),
            "ring_frames": len(self.ring),
            "ring_ready": self._ring_ready.is_set(),
            "results_pending": lag.pending if lag else None,
            "results_oldest_seconds": round(lag.oldest_age, 1) if lag else None,
            "lagging": lagging,
        }
        doc["ok"] = doc["ok"] and not lagging
        return doc

    async def run(self) -> None:
        results_stream = results_stream_name(self.settings)
        results_sub = await self.bus.durable_pull(results_stream, REGISTRATOR_RESULTS_DURABLE)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._watch_drain_timeouts())
            tg.create_task(self._watch_lag(results_stream))
            if self.settings.event_retention_days > 0 or self.settings.event_storage_max_gb > 0:
                tg.create_task(self._retention())
            # Results from the first moment, a restart included: the frame buffer fills beside them, and only the
            # proofs, which need its frames, wait for it (issue 15: a live camera kept the rebuild from ever ending,
            # and no result was absorbed meanwhile).
            tg.create_task(self._consume_results(results_sub))
            frames_sub = await self.bus.bind_when_ready(
                frames_stream_name(self.settings), REGISTRATOR_FRAMES_DURABLE, self.stop_event
            )
            if frames_sub is not None:
                tg.create_task(self._consume(frames_sub, self._on_frames_msg))
                if self._resumed:
                    await self._rebuild_ring()
                self._ring_ready.set()
                with contextlib.suppress(Stopping):  # stopped while Redis was away: the next start owes them still
                    for event in self._owed:
                        await self._close(event)
        # Events still open at shutdown keep their PENDING record; finalising ones are finished first.
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=20)

    async def _consume(self, sub: JetStreamContext.PullSubscription, handle: Any) -> None:
        try:
            while not self.stop_event.is_set():
                for msg in await fetch(sub, 256, timeout=0.5):
                    await handle(msg)
        except Stopping:
            return  # stopped while Redis was away: what was not acked is redelivered to the next start

    # -- frames and source lifecycle -------------------------------------------------------------

    async def _on_frames_msg(self, msg: Msg) -> None:
        if self.bus.subjects.is_source_status(msg.subject):
            status = await self.bus.decode(msg, SourceStatus)
            if status is not None and status.state.final:
                await self._end_feed(status.feed, status.wall_time, hold=[msg])
                self._check_drained(status.feed)
            elif status is not None and status.state is SourceState.STARTED:
                await self._new_run(status, msg)
        else:
            ref = await self.bus.decode(msg, FrameRef)
            if ref is not None:
                self.ring.add(ref)
        await msg.ack()

    async def _end_feed(self, feed: str, wall_time: float, hold: list[Msg]) -> None:
        await self.redis_must("source ended", lambda: self.state.mark_ended(feed, wall_time), hold=hold)
        progress = self.sources[feed]
        progress.ended, progress.ended_at = True, wall_time

    async def _new_run(self, status: SourceStatus, msg: Msg) -> None:
        """A new run of a source: an older run that never ended (its reader was killed) is over. Its open events close
        with the frames they have, and it drains with the results it got: no summary will come for it."""
        for feed, progress in list(self.sources.items()):
            if split_feed(feed)[0] != status.source_id or feed == status.feed or progress.ended:
                continue
            self.log.warning(
                "a new run of the source started: the run %s ends here, with what it has",
                split_feed(feed)[1],
                extra={"source_id": status.source_id},
            )
            await self._end_feed(feed, status.wall_time, hold=[msg])
            self._check_drained(feed, timed_out=True)

    # -- results ---------------------------------------------------------------------------------

    async def _consume_results(self, sub: JetStreamContext.PullSubscription) -> None:
        try:
            while not self.stop_event.is_set():
                msgs = await fetch(sub, 256, timeout=0.5)
                if msgs:
                    await self._on_results(msgs)
                await self._close_quiet()
        except Stopping:
            return  # stopped while Redis was away: the batch in hand is redelivered to the next start

    async def _close_quiet(self) -> None:
        """Live sources: events whose model has sent no result for event_gap of wall time close with what they have,
        marked NO_RESULTS (frames still come: the detector is out) or NO_FRAMES (the camera went dark)."""
        now, gap = time.monotonic(), self.settings.event_gap
        for feed, model in {key[:2] for key in self.tracker.open}:
            last = self._last_result.get((feed, model))
            if last is None or now - last <= gap or feed in self._unpaced:
                continue
            # Frames after the last result: the camera streams on and the detector is out; none: the camera is dark.
            answered = self.sources[feed].result_pts.get(model, 0.0)
            blind = (self.ring.latest_pts(feed) or 0.0) > answered
            why = EventClose.NO_RESULTS if blind else EventClose.NO_FRAMES
            for event in self.tracker.close_quiet(feed, model, why):
                self.log.warning(
                    "event %s closed: no result of %s for %.1f s (%s)",
                    event.id,
                    model,
                    now - last,
                    why.value,
                    extra={"source_id": event.source_id},
                )
                await self._close(event)

    async def _on_results(self, msgs: list[Msg]) -> None:
        """Apply a batch, write its effects (records and the registrator's own state) in one pipeline,
        and only then ack it: a registrator killed at any point loses no result and counts none twice."""
        assert self.store is not None
        touched: dict[str, OpenEvent] = {}
        closed: list[OpenEvent] = []
        seen: set[tuple[str, str]] = set()  # (feed, model) whose window changed
        summaries: list[RoutingSummary] = []
        tally: Counter[tuple[str, str]] = Counter()
        for msg in msgs:
            if self.bus.subjects.is_routed(msg.subject):
                summary = await self.bus.decode(msg, RoutingSummary)
                if summary is not None:
                    summaries.append(summary)
                continue
            result = await self.bus.decode(msg, InferenceResult)
            if result is None:
                continue
            if self._absorb(result, touched, closed, tally):
                seen.add((result.frame.feed, result.model))
        now = time.time()
        records = [
            event
            for event in touched.values()
            # Every transition is saved; a growing event's record is refreshed at most once a second.
            if event.saved_at == 0.0 or event.frames == 2 or now - event.saved_at >= _RECORD_REFRESH_SECONDS
        ]
        for event in records:
            event.saved_at = now

        async def write() -> None:
            assert self.store is not None
            # One transaction: written whole or not at all, so a retry after Redis came back counts nothing twice.
            async with self.store.redis.pipeline(transaction=True) as pipe:
                for event in touched.values():
                    if event.state is not EventState.DONE:
                        self.state.keep(pipe, event)
                for event in records:
                    await self.store.save_in(pipe, event.record())
                for feed, model in seen:
                    self.state.window(pipe, feed, model, self.sources[feed].windows[model])
                for summary in summaries:
                    self.state.summary(pipe, summary)
                self.state.count(pipe, tally)
                await pipe.execute()

        await self.redis_must("results", write, hold=msgs)
        await self.notices.publish_all(event.record() for event in records)
        for msg in msgs:
            await msg.ack()
        for event in closed:
            await self._close(event)
        for summary in summaries:
            progress = self.sources[summary.feed]
            progress.summary, progress.summary_at = summary, time.monotonic()
        for feed in {f for f, _ in seen} | {s.feed for s in summaries}:
            self._prune(feed)
            self._check_drained(feed)

    def _absorb(
        self, result: InferenceResult, touched: dict[str, OpenEvent], closed: list[OpenEvent], tally: Counter[tuple[str, str]]
    ) -> bool:
        """Apply one result in memory, counting it into `tally`; False for one seen before (redelivered)."""
        frame = result.frame
        feed = frame.feed
        if frame.wall_time <= self.drained_until.get(feed, 0.0):
            # A copy that outlived the stream's duplicate window: its source has drained, and an event it opened
            # now would never close (issue 15).
            self.m_stale.labels(model=result.model).inc()
            return False
        progress = self.sources[feed]
        window = progress.windows.get(result.model)
        if window is None:
            window = progress.windows[result.model] = SeenWindow(self.settings.dedup_window_frames)
        verdict = window.add(frame.seq)
        if verdict is not Seen.NEW:
            (self.m_duplicates if verdict is Seen.DUPLICATE else self.m_past).labels(model=result.model).inc()
            return False
        self._last_result[(feed, result.model)] = time.monotonic()
        if frame.policy is DropPolicy.WAIT:
            self._unpaced.add(feed)
        self.m_results.labels(source_id=frame.source_id, model=result.model).inc()
        progress.result_pts[result.model] = max(progress.result_pts.get(result.model, 0.0), frame.pts)
        tally[(frame.source_id, TOTAL_INFERRED + result.model)] += 1
        if result.error is not None:
            tally[(frame.source_id, TOTAL_ERRORS + result.model)] += 1
        if result.kind is ModelKind.DETECTION and result.error is None:
            changed, ended = self.tracker.observe(result)
            for event in changed:
                if event.state is EventState.CREATED and event.id not in touched:
                    progress.events += 1
                    tally[(frame.source_id, TOTAL_EVENTS)] += 1
                    self.log.info("event %s opened at %.1f s", event.id, event.start, extra={"source_id": frame.source_id})
                touched[event.id] = event
            closed.extend(ended)
        return True

    def _prune(self, feed: str) -> None:
        """Keep the frames any open or finalising event, or one about to open, may still need."""
        progress = self.sources[feed]
        if not progress.result_pts:
            return
        horizon = min(progress.result_pts.values()) - self.settings.event_gap
        pinned = [e.start for e in self.finalising.values() if e.feed == feed]
        oldest_open = self.tracker.oldest_start(feed)
        if oldest_open is not None:
            pinned.append(oldest_open)
        horizon = min([horizon, *pinned]) - self.settings.pre_roll - 1.0
        self.ring.prune_before(feed, horizon)

    # -- closing and proofs ----------------------------------------------------------------------

    async def _close(self, event: OpenEvent) -> None:
        assert self.store is not None
        event.state = EventState.DONE

        async def write() -> None:
            assert self.store is not None
            async with self.store.redis.pipeline(transaction=True) as pipe:
                await self.store.save_in(pipe, event.record())
                self.state.keep(pipe, event)  # a restart finds it and cuts its proofs
                await pipe.execute()

        await self.redis_must("closed event", write)
        await self.notices.publish(event.record())
        self.finalising[event.id] = event
        self._proof_task(event, self._finalise(event))

    def _proof_task(self, event: OpenEvent, work: Coroutine[Any, Any, None]) -> None:
        """Cutting an event's proofs, first try or retry: a draining source waits for all of them (an event closed by a
        storage outage gets its proofs once storage is back, not ERROR at the drain); each is forgotten when done."""
        task = asyncio.create_task(work)
        pending = self.sources[event.feed].finalising
        for tasks in (pending, self._tasks):
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    async def _finalise(self, event: OpenEvent) -> None:
        """First attempt, awaited by a draining source; if storage fails, the event says ERROR and retries go on."""
        assert self.store is not None
        try:
            chosen = await self._select_frames(event)
        except Stopping:
            return
        except Exception as exc:  # noqa: BLE001 - nothing to cut: no retry can help
            await self._failed(event, exc)
            await self._forget(event)
            return
        if not await self._attempt(event, chosen):
            self._proof_task(event, self._retry(event, chosen))

    async def _retry(self, event: OpenEvent, chosen: list[FrameRef]) -> None:
        delay = 1.0
        for _ in range(self.settings.finalise_retries):
            if await self.pause(delay):
                return  # stopping: the record keeps saying ERROR with its reason
            if await self._attempt(event, chosen):
                return
            delay = min(delay * 2, 30.0)
        await self._forget(event)

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
        record = event.record(**proofs)
        store = self.store  # narrowed above, for the lambda
        try:
            await self.redis_must("finished event", lambda: store.save(record))
        except Stopping:
            return True  # the event stays DONE in the saved state: the next start cuts its proofs again
        await self.notices.publish(record)
        await self._forget(event)
        self.m_events.labels(source_id=event.source_id, state=EventState.FINISHED.value).inc()
        self.m_finalise.observe(time.perf_counter() - started)
        self.log.info(
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
        self.finalising.pop(event.id, None)
        # Stopping: a restart finds its record FINISHED and its saved state: it cuts the proofs once more.
        with contextlib.suppress(Stopping):
            await self.redis_must("forget event", lambda: self.state.drop(event.id))

    async def _failed(self, event: OpenEvent, exc: BaseException) -> None:
        assert self.store is not None
        event.state = EventState.ERROR
        self.m_events.labels(source_id=event.source_id, state=EventState.ERROR.value).inc()
        self.log.error("event %s has no proofs yet: %r", event.id, exc, extra={"source_id": event.source_id})
        await self.store.save(record := event.record(error=f"{type(exc).__name__}: {exc}"[:500]))
        await self.notices.publish(record)

    async def _select_frames(self, event: OpenEvent) -> list[FrameRef]:
        """The frame shown at each clip tick, chosen once: retries reuse it even after the ring has moved on."""
        s = self.settings
        progress = self.sources[event.feed]
        start, end = max(0.0, event.start - s.pre_roll), event.end + s.post_roll
        # After a restart the frames streamed before it are still being read back into the buffer.
        while not self._ring_ready.is_set():
            if await self.pause(0.2):
                raise Stopping("frames for proofs")
        # Live sources: the post-roll frames may not have arrived yet.
        deadline = time.monotonic() + _FRAME_WAIT_SECONDS
        waits = not progress.ended and event.closed_by is not EventClose.NO_FRAMES  # a dark camera sends no more
        while waits and (self.ring.latest_pts(event.feed) or 0.0) < end and time.monotonic() < deadline:
            if await self.pause(0.2):
                raise Stopping("post-roll frames")
        latest = self.ring.latest_pts(event.feed)
        if latest is None:
            raise RuntimeError("no frames of the source are buffered")
        end = min(end, latest)
        return pick_frames(self.ring.window(event.feed, start, end), clip_ticks(start, end, s.clip_fps))

    # -- draining ended sources ------------------------------------------------------------------

    def _check_drained(self, feed: str, *, timed_out: bool = False) -> None:
        progress = self.sources[feed]
        if progress.draining or not (progress.complete() or (timed_out and progress.ended)):
            return
        progress.draining = True
        task = asyncio.create_task(self._drain(feed, timed_out))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _drain(self, feed: str, timed_out: bool) -> None:
        progress = self.sources[feed]
        source_id, run = split_feed(feed)
        summary = progress.summary
        results = {model: window.count for model, window in progress.windows.items()}
        if timed_out:
            self.log.warning(
                "source drained after %.0f s without all results: routed %s, got %s",
                self.settings.drain_timeout,
                summary.tasks if summary else "?",
                results,
                extra={"source_id": source_id},
            )
        try:
            for event in self.tracker.close_source(feed):
                await self._close(event)
        except Stopping:
            return  # the source's saved state stays: the next start drains it
        while progress.finalising:  # a first try that fails starts a retry before it ends
            await asyncio.wait(set(progress.finalising))
        drained = SourceDrained(
            source_id=source_id,
            run=run,
            frames_routed=summary.frames_routed if summary else 0,
            tasks=summary.tasks if summary else {},
            results=results,
            events=progress.events,
            wall_time=time.time(),
        )
        await self.bus.publish_core(self.bus.subjects.drained(source_id), drained)
        self.log.info("source drained: %d event(s), results %s", progress.events, results, extra={"source_id": source_id})
        self.ring.forget(feed)
        self._unpaced.discard(feed)
        for key in [k for k in self._last_result if k[0] == feed]:
            del self._last_result[key]
        self.drained_until[feed] = progress.ended_at
        del self.sources[feed]
        with contextlib.suppress(Stopping):  # its saved state stays: the next start drains it again, and finds nothing left to do
            await self.redis_must("drained source", lambda: self.state.forget_source(feed, list(results)))

    async def _restore(self) -> list[OpenEvent]:
        """Pick up where a previous registrator stopped; returns the closed events still owed their proofs."""
        events = await self.state.open_events()
        for (feed, model), window in (await self.state.windows(self.settings.dedup_window_frames)).items():
            self.sources[feed].windows[model] = window
        for summary in await self.state.summaries():
            progress = self.sources[summary.feed]
            progress.summary, progress.summary_at = summary, time.monotonic()
        ended, ended_at = await self.state.ended_sources(), await self.state.ended_at()
        for feed in ended:
            self.sources[feed].ended, self.sources[feed].ended_at = True, ended_at.get(feed, 0.0)
        self.drained_until = {feed: t for feed, t in ended_at.items() if feed not in ended}
        owed = []
        for event in events:
            if event.state in (EventState.CREATED, EventState.PENDING):
                self.tracker.open[(event.feed, event.model, event.label)] = event
                # Its wall clock starts now: if no result of it comes after the restart, it still closes.
                self._last_result[(event.feed, event.model)] = time.monotonic()
            else:
                owed.append(event)
            self.sources[event.feed].events += 1
        self._resumed = bool(events or self.sources)
        if self._resumed:
            self.log.info(
                "resumed: %d open event(s), %d owed proofs, %d source(s) in progress",
                len(events) - len(owed),
                len(owed),
                len(self.sources),
            )
        return owed

    async def _rebuild_ring(self) -> None:
        """The frames seen before the restart were acked: read them again from the stream, which keeps them.

        Up to the stream's last message at this moment: what comes after arrives through the frames consumer,
        so a source that never pauses cannot keep this going (the old loop ended only after a silent second)."""
        s = self.settings
        stream = frames_stream_name(s)
        last = (await self.bus.js.stream_info(stream)).state.last_seq
        since = datetime.fromtimestamp(time.time() - s.max_event_duration - s.pre_roll - s.event_gap - _REBUILD_MARGIN, UTC)
        config = ConsumerConfig(
            deliver_policy=DeliverPolicy.BY_START_TIME,
            opt_start_time=since,
            ack_policy=AckPolicy.NONE,
            filter_subject=self.bus.subjects.frames,
            inactive_threshold=60.0,
        )
        sub = await self.bus.js.pull_subscribe(self.bus.subjects.frames, stream=stream, config=config)
        count, reached = 0, 0
        started = time.monotonic()
        try:
            while reached < last and not self.stop_event.is_set() and (msgs := await fetch(sub, 1000, timeout=1.0)):
                for msg in msgs:
                    ref = await self.bus.decode(msg, FrameRef)
                    if ref is not None:
                        self.ring.add(ref)
                        count += 1
                reached = msgs[-1].metadata.sequence.stream
        finally:
            await sub.unsubscribe()
        self.log.info("frame buffer rebuilt from the stream: %d frame references in %.1f s", count, time.monotonic() - started)

    async def _watch_lag(self, stream: str) -> None:
        """How far behind the results are, for /healthz and the metrics: a registrator that stopped absorbing
        them (or cannot keep up) is unhealthy, whatever its connections say."""
        while not self.stop_event.is_set():
            try:
                self.lag = await self.bus.lag(stream, REGISTRATOR_RESULTS_DURABLE)
                self.m_pending.set(self.lag.pending)
                self.m_oldest.set(self.lag.oldest_age)
            except Exception as exc:  # noqa: BLE001 - NATS away: /healthz says so already; the last figures stay
                self.log.debug("could not read the results' lag: %r", exc)
            await self.pause(_LAG_CHECK_SECONDS)

    async def _retention(self) -> None:
        assert self.store is not None and self.storage is not None
        store, storage = self.store, self.storage
        s, tmp = self.settings, Path(self.settings.TMP_PATH)
        sized = s.event_storage_max_gb == 0  # without a budget, the size of older events matters to nothing
        while not self.stop_event.is_set():
            try:
                if not sized:
                    await size_unsized(store, storage)
                    sized = True
                if s.event_retention_days > 0:
                    self._count_removed("age", await sweep(store, storage, tmp, s.event_retention_days * 86400))
                if s.event_storage_max_gb > 0:
                    self._count_removed("budget", await sweep_budget(store, storage, tmp, int(s.event_storage_max_gb * 1e9)))
                self.m_stored.set(await self.store.stored_bytes())
            except Exception as exc:  # noqa: BLE001 - Redis or storage away: the next sweep tries again
                self.log.warning("retention sweep failed: %r", exc)
            await self.pause(s.retention_interval)

    def _count_removed(self, reason: str, removed: Removed) -> None:
        self.m_retained.labels(reason=reason).inc(removed.events)
        self.m_retained_bytes.labels(reason=reason).inc(removed.bytes)

    async def _watch_drain_timeouts(self) -> None:
        while not await self.pause(1.0):
            now = time.monotonic()
            for feed, progress in list(self.sources.items()):
                waited = now - progress.summary_at
                if progress.summary is not None and not progress.draining and waited > self.settings.drain_timeout:
                    self._check_drained(feed, timed_out=True)
