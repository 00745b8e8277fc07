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
from redis.asyncio.client import Pipeline

from services.registrator.clips import SEGMENT_SECONDS, ClipFrames, plan_clip, segment_span
from services.registrator.events import EventRules, EventTracker, OpenEvent
from services.registrator.frames import FrameRing
from services.registrator.leases import LeaseLost, SourceLeases, plan_moves
from services.registrator.notices import Notices
from services.registrator.objects import ObjectEventTracker, ObjectRules
from services.registrator.proofs import make_proofs
from services.registrator.retention import Removed, size_unsized, sweep, sweep_budget
from services.registrator.settings import RegistratorSettings
from services.registrator.state import RegistratorState, SavedSource
from services.registrator.tracking import TrackerStateError
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
from shared.keys import TOTAL_ERRORS, TOTAL_EVENTS, TOTAL_INFERRED, TOTAL_LINE, RedisKeys
from shared.lifecycle import Service, Stopping
from shared.storage import SeaweedStorage
from shared.subjects import (
    Subjects,
    frames_stream_name,
    registrator_frames_durable,
    registrator_results_durable,
    results_stream,
    results_stream_name,
)

_FRAME_WAIT_SECONDS = 10.0
_RECORD_REFRESH_SECONDS = 1.0
_REBUILD_MARGIN = 30.0
_LAG_CHECK_SECONDS = 2.0
_HANDOVER_SECONDS = 20.0  # proofs being cut when a source is given up get this long before the lease goes


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


@dataclass
class HeldSource:
    """A source this replica holds the lease of: its consumers, and whether its frame buffer is back."""

    source_id: str
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    ring_ready: asyncio.Event = field(default_factory=asyncio.Event)
    consumers: set[asyncio.Task[None]] = field(default_factory=set)


class RegistratorService(Service[RegistratorSettings]):
    name = "registrator"

    def __init__(self, settings: RegistratorSettings) -> None:
        super().__init__(settings)
        self.keys = RedisKeys(settings)
        # An event per tracked object (issue 18), or the seed's one per label in view (event_mode=scene).
        self.tracker: EventTracker | ObjectEventTracker = (
            ObjectEventTracker(ObjectRules.from_settings(settings))
            if settings.event_mode == "object"
            else EventTracker(EventRules.from_settings(settings))
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
        self.leases: SourceLeases  # set in start(), with Redis
        self.held: dict[str, HeldSource] = {}  # the sources whose lease this replica holds
        self._moving: set[str] = set()  # sources being taken or given up right now
        self._group: asyncio.TaskGroup | None = None  # run()'s: each held source's consumers run in it
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
        self.m_crossings = self.metrics.counter(
            "line_crossings", "tracked objects crossing a configured line", ("source_id", "line", "label", "direction")
        )
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
        if upgraded := await self.state.upgrade_seen_sets(self.settings.dedup_window_frames):
            self.log.info("%d seen set(s) of an older version became windows", upgraded)
        self.leases = SourceLeases(redis, self.keys, self.instance, self.settings.lease_ttl)
        self.storage = await self.open_storage(stack)

    def health(self) -> dict[str, Any]:
        s, lag = self.settings, self.lag
        lagging = lag is not None and (lag.pending > s.results_lag_max_pending or lag.oldest_age > s.results_lag_max_age)
        doc = super().health() | {
            "open_events": len(self.tracker.open),
            "finalising": len(self.finalising),
            "ring_frames": len(self.ring),
            "sources_held": sorted(self.held),
            "ring_ready": all(held.ring_ready.is_set() for held in self.held.values()),
            "results_pending": lag.pending if lag else None,
            "results_oldest_seconds": round(lag.oldest_age, 1) if lag else None,
            "lagging": lagging,
        }
        doc["ok"] = doc["ok"] and not lagging
        return doc

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            self._group = tg
            tg.create_task(self._watch_drain_timeouts())
            tg.create_task(self._watch_lag())
            if self.settings.event_retention_days > 0 or self.settings.event_storage_max_gb > 0:
                tg.create_task(self._retention())
            tg.create_task(self._hold_sources())
        # Events still open at shutdown keep their PENDING record; finalising ones are finished first.
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=_HANDOVER_SECONDS)

    # -- which sources this replica holds ------------------------------------------------------------

    async def _hold_sources(self) -> None:
        """Heartbeat, renew the leases held, take the sources hashing gives this replica, give up those it gives
        another; at stop, give every source up (the others take them at once instead of after the lease's TTL)."""
        interval = self.settings.lease_ttl / 3
        while not self.stop_event.is_set():
            try:
                await self._hold_round()
            except Stopping:
                break
            except Exception as exc:  # noqa: BLE001 - Redis or NATS away: the leases lapse, and the next round retries
                self.log.warning("could not renew or move source leases: %r", exc)
            if await self.pause(interval):
                break
        with contextlib.suppress(Exception):  # Redis away at stop: the leases and the heartbeat simply run out
            await asyncio.gather(*(self._give_up(source_id) for source_id in list(self.held)))
            await self.leases.leave()

    async def _hold_round(self) -> None:
        replicas = await self.leases.heartbeat()
        for source_id in list(self.held):
            if source_id not in self._moving and not await self.leases.renew(source_id):
                self.log.warning("lease lost: another replica holds the source now", extra={"source_id": source_id})
                await self._drop(source_id)
        take, give_up = plan_moves(self.instance, replicas, await self._known_sources(), set(self.held) | self._moving)
        assert self._group is not None
        for source_id in take:
            if await self.leases.acquire(source_id):
                self._moving.add(source_id)
                self._group.create_task(self._take(source_id))
        for source_id in give_up:
            if source_id in self.held and source_id not in self._moving:
                self._moving.add(source_id)
                self._group.create_task(self._give_up(source_id))

    async def _known_sources(self) -> set[str]:
        """Every source with a message in the frames or results stream: each subject of both is one source's."""
        subjects = await self.bus.stream_subjects(frames_stream_name(self.settings), ">")
        subjects |= await self.bus.stream_subjects(results_stream_name(self.settings), ">")
        return {Subjects.source_of(subject) for subject in subjects}

    async def _take(self, source_id: str) -> None:
        """Read back what the previous holder saved, then consume the source's results and frames."""
        held = self.held[source_id] = HeldSource(source_id)
        try:
            saved = await self.state.load_source(source_id, self.settings.dedup_window_frames)
            owed = self._apply(saved)
            s, settings = self.bus.subjects, self.settings
            results = await self.bus.durable_pull(
                results_stream_name(settings),
                registrator_results_durable(source_id),
                filter_subjects=[s.results(source_id), s.routed(source_id)],
            )
            self._consume_in(held, self._consume_results(held, results))
            frames_stream, frames_durable = frames_stream_name(settings), registrator_frames_durable(source_id)
            frames = await self.bus.bind_when_ready(
                frames_stream,
                frames_durable,
                held.stop,
                filter_subjects=[s.frames(source_id), s.source_status(source_id)],
            )
            if frames is None:
                return
            # Results from the first moment: the frame buffer fills beside them, and only the proofs, which need its
            # frames, wait for it (issue 15). The frames a previous holder acked are read again from the stream.
            self._consume_in(held, self._consume(held, frames, self._on_frames_msg))
            if saved or await self.bus.acked_any(frames_stream, frames_durable):
                await self._rebuild_ring(source_id)
            held.ring_ready.set()
            self.log.info(
                "source taken: %d open event(s), %d owed proofs",
                len(saved.open_events) - len(owed),
                len(owed),
                extra={"source_id": source_id},
            )
            for event in owed:
                await self._close(event)
        except (Stopping, LeaseLost):
            pass
        except Exception as exc:  # noqa: BLE001 - NATS or Redis away: let go, and the next round takes it again
            self.log.warning("could not take the source: %r", exc, extra={"source_id": source_id})
            await self._drop(source_id)
            with contextlib.suppress(Exception):
                await self.leases.release(source_id)
        finally:
            self._moving.discard(source_id)

    def _consume_in(self, held: HeldSource, work: Coroutine[Any, Any, None]) -> None:
        assert self._group is not None
        task = self._group.create_task(work)
        held.consumers.add(task)
        task.add_done_callback(held.consumers.discard)

    async def _give_up(self, source_id: str) -> None:
        """Another replica should hold it (or this one stops): stop consuming, let its proofs finish, forget it, and
        only then let the lease go, so the next holder reads back everything this one wrote."""
        held = self.held.get(source_id)
        if held is None:
            return
        self._moving.add(source_id)
        try:
            held.stop.set()
            if held.consumers:
                await asyncio.wait(set(held.consumers))
            proofs = [t for feed, p in self.sources.items() if split_feed(feed)[0] == source_id for t in p.finalising]
            # At stop, run() gives every proof the same time once, for all sources together; a proof cut short
            # stays DONE in the saved state and the next holder cuts it.
            if proofs and not self.stop_event.is_set():
                await asyncio.wait(proofs, timeout=_HANDOVER_SECONDS)
            self._forget_source(source_id)
            await self.leases.release(source_id)
            self.log.info("source given up to another replica", extra={"source_id": source_id})
        finally:
            self._moving.discard(source_id)

    async def _drop(self, source_id: str) -> None:
        """The lease is gone: stop at once and forget, writing nothing more (the next holder reads back what was)."""
        held = self.held.get(source_id)
        if held is None:
            return
        held.stop.set()
        for feed, progress in list(self.sources.items()):
            if split_feed(feed)[0] == source_id:
                for task in progress.finalising:
                    task.cancel()
        self._forget_source(source_id)
        self.leases.tokens.pop(source_id, None)

    def _forget_source(self, source_id: str) -> None:
        def mine(feed: str) -> bool:
            return split_feed(feed)[0] == source_id

        self.held.pop(source_id, None)
        for feed in {f for f in self.sources if mine(f)} | {k[0] for k in self.tracker.open if mine(k[0])}:
            self.tracker.forget(feed)
            self.sources.pop(feed, None)
        for model_key in [k for k in self._last_result if mine(k[0])]:
            del self._last_result[model_key]
        for feed in [f for f in self.drained_until if mine(f)]:
            del self.drained_until[feed]
        for event_id in [i for i, e in self.finalising.items() if e.source_id == source_id]:
            del self.finalising[event_id]
        self._unpaced = {f for f in self._unpaced if not mine(f)}
        self.ring.forget_source(source_id)

    async def _consume(self, held: HeldSource, sub: JetStreamContext.PullSubscription, handle: Any) -> None:
        try:
            while not self.stop_event.is_set() and not held.stop.is_set():
                for msg in await fetch(sub, 256, timeout=0.5):
                    if held.stop.is_set():  # given up or dropped meanwhile: the rest go back, to whoever holds it now
                        await msg.nak()
                        continue
                    await handle(msg)
        except Stopping:
            return  # stopped while Redis was away: what was not acked is redelivered to the next start
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

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

    async def _consume_results(self, held: HeldSource, sub: JetStreamContext.PullSubscription) -> None:
        msgs: list[Msg] = []
        try:
            while not self.stop_event.is_set() and not held.stop.is_set():
                msgs = await fetch(sub, 256, timeout=0.5)
                if held.stop.is_set():
                    raise LeaseLost(held.source_id)  # given up or dropped while the pull waited: not this session's
                if msgs:
                    await self._on_results(held.source_id, msgs)
                msgs = []
                await self._close_quiet(held.source_id)
        except Stopping:
            return  # stopped while Redis was away: the batch in hand is redelivered to the next start
        except LeaseLost:
            # Another replica holds the source now (or this session ended): the batch in hand goes back at once.
            for msg in msgs:
                with contextlib.suppress(Exception):
                    await msg.nak()
            if self.held.get(held.source_id) is held:
                self.log.warning("lease lost: the source is handed over", extra={"source_id": held.source_id})
                await self._drop(held.source_id)
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _close_quiet(self, source_id: str) -> None:
        """Live sources: events whose model has sent no result for event_gap of wall time close with what they have,
        marked NO_RESULTS (frames still come: the detector is out) or NO_FRAMES (the camera went dark)."""
        now, gap = time.monotonic(), self.settings.event_gap
        for (feed, model), last in list(self._last_result.items()):
            if split_feed(feed)[0] != source_id or now - last <= gap or feed in self._unpaced:
                continue
            if not any(key[:2] == (feed, model) for key in self.tracker.open) and not self.tracker.buffered(feed, model):
                continue
            # Frames after the last result: the camera streams on and the detector is out; none: the camera is dark.
            answered = self.sources[feed].result_pts.get(model, 0.0)
            blind = (self.ring.latest_pts(feed) or 0.0) > answered
            why = EventClose.NO_RESULTS if blind else EventClose.NO_FRAMES
            closing = await self._flush_tracker(feed, model) + self.tracker.close_quiet(feed, model, why)
            for event in closing:
                self.log.warning(
                    "event %s closed: no result of %s for %.1f s (%s)",
                    event.id,
                    model,
                    now - last,
                    why.value,
                    extra={"source_id": event.source_id},
                )
                await self._close(event)

    async def _flush_tracker(self, feed: str, model: str) -> list[OpenEvent]:
        """Object mode: the frames still in the tracker's reorder buffer are tracked before the feed's events close;
        what they open or extend is counted and saved as a batch of results would be. Returns what they closed."""
        changed, closed = self.tracker.flush(feed, model)
        if not changed:
            return closed
        source_id = split_feed(feed)[0]
        tally: Counter[tuple[str, str]] = Counter()
        for event in changed:
            if event.state is EventState.CREATED:
                self.sources[feed].events += 1
                tally[(source_id, TOTAL_EVENTS)] += 1
                self.log.info("event %s opened at %.1f s", event.id, event.start, extra={"source_id": source_id})
        trackers = {pair: self.tracker.state_bytes(*pair) for pair in self.tracker.take_dirty()}

        async def fill(pipe: Pipeline) -> None:
            await self._queue_changes(pipe, changed, changed, trackers, tally)

        await self.redis_must("flushed events", lambda: self.leases.write_fenced(source_id, fill))
        return closed

    async def _queue_changes(
        self,
        pipe: Pipeline,
        kept: list[OpenEvent],
        records: list[OpenEvent],
        trackers: dict[tuple[str, str], bytes],
        tally: Counter[tuple[str, str]],
    ) -> None:
        """Into a source's transaction: its open events' saved state, their records, tracker states and counts."""
        assert self.store is not None
        for event in kept:
            self.state.keep(pipe, event)
        for event in records:
            await self.store.save_in(pipe, event.record())
        for (feed, model), data in trackers.items():
            self.state.tracker(pipe, feed, model, data)
        self.state.count(pipe, tally)

    async def _on_results(self, source_id: str, msgs: list[Msg]) -> None:
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

        # Taken once, outside the transaction: a retry after Redis came back writes the same.
        trackers = {pair: self.tracker.state_bytes(*pair) for pair in self.tracker.take_dirty()}
        for (source, line, label, direction), n in self.tracker.take_crossings().items():
            tally[(source, f"{TOTAL_LINE}{line}:{label}:{direction}")] += n
            self.m_crossings.labels(source_id=source, line=line, label=label, direction=direction).inc(n)

        async def fill(pipe: Pipeline) -> None:
            kept = [event for event in touched.values() if event.state is not EventState.DONE]
            await self._queue_changes(pipe, kept, records, trackers, tally)
            for feed, model in seen:
                self.state.window(pipe, feed, model, self.sources[feed].windows[model])
            for summary in summaries:
                self.state.summary(pipe, summary)

        # One transaction, only while this replica holds the source: written whole or not at all, so a retry after
        # Redis came back counts nothing twice, and a replica that lost the source writes nothing (LeaseLost).
        await self.redis_must("results", lambda: self.leases.write_fenced(source_id, fill), hold=msgs)
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
        # A clip starts up to a segment before its pre-roll (segment_span); a second more for the frame before it.
        horizon = min([horizon, *pinned]) - self.settings.pre_roll - SEGMENT_SECONDS - 1.0
        self.ring.prune_before(feed, horizon)

    # -- closing and proofs ----------------------------------------------------------------------

    async def _close(self, event: OpenEvent) -> None:
        assert self.store is not None
        event.state = EventState.DONE

        async def fill(pipe: Pipeline) -> None:
            assert self.store is not None
            await self.store.save_in(pipe, event.record())
            self.state.keep(pipe, event)  # a restart finds it and cuts its proofs

        try:
            await self.redis_must("closed event", lambda: self.leases.write_fenced(event.source_id, fill))
        except LeaseLost:
            await self._drop(event.source_id)  # the next holder read it back open, and closes it itself
            raise
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

    async def _retry(self, event: OpenEvent, chosen: ClipFrames) -> None:
        delay = 1.0
        for _ in range(self.settings.finalise_retries):
            if await self.pause(delay):
                return  # stopping: the record keeps saying ERROR with its reason
            if await self._attempt(event, chosen):
                return
            delay = min(delay * 2, 30.0)
        await self._forget(event)

    async def _attempt(self, event: OpenEvent, chosen: ClipFrames) -> bool:
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

    async def _select_frames(self, event: OpenEvent) -> ClipFrames:
        """The frame shown at each clip tick, chosen once: retries reuse it even after the ring has moved on."""
        s = self.settings
        progress = self.sources[event.feed]
        start, end = segment_span(max(0.0, event.start - s.pre_roll), event.end + s.post_roll, s.clip_fps)
        # After a restart or a move the frames streamed before it are still being read back into the buffer.
        held = self.held.get(event.source_id)
        if held is None:
            raise Stopping("the source moved to another replica")
        while not held.ring_ready.is_set():
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
        return plan_clip(self.ring.window(event.feed, start, end), start, end, s.clip_fps)

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
            closing = [event for model in results for event in await self._flush_tracker(feed, model)]
            for event in closing + self.tracker.close_source(feed):
                await self._close(event)
        except (Stopping, LeaseLost):
            return  # the source's saved state stays: the next start, or the next holder, drains it
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

    def _apply(self, saved: SavedSource) -> list[OpenEvent]:
        """Pick up a source where its previous holder (or this replica before a restart) stopped; returns the closed
        events still owed their proofs."""
        for (feed, model), window in saved.windows.items():
            self.sources[feed].windows[model] = window
        for summary in saved.summaries:
            progress = self.sources[summary.feed]
            progress.summary, progress.summary_at = summary, time.monotonic()
        for feed in saved.ended:
            self.sources[feed].ended, self.sources[feed].ended_at = True, saved.ended_at.get(feed, 0.0)
        self.drained_until |= {feed: t for feed, t in saved.ended_at.items() if feed not in saved.ended}
        for (feed, model), data in saved.trackers.items():
            try:
                self.tracker.load_state(feed, model, data)
            except TrackerStateError as exc:
                self.log.warning("object tracker not restored, its ids start again: %s", exc, extra={"source_id": feed})
        owed = []
        for event in saved.open_events:
            if event.state in (EventState.CREATED, EventState.PENDING):
                try:
                    self.tracker.adopt(event)
                    # Its wall clock starts now: if no result of it comes after the restart, it still closes.
                    self._last_result[(event.feed, event.model)] = time.monotonic()
                except ValueError:  # a scene event, saved before event_mode became object: it ends here
                    event.closed_by = EventClose.SOURCE_END
                    owed.append(event)
            else:
                owed.append(event)
            self.sources[event.feed].events += 1
        return owed

    async def _rebuild_ring(self, source_id: str) -> None:
        """The frames seen before the restart or move were acked: read them again from the stream, which keeps them.

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
            filter_subject=self.bus.subjects.frames(source_id),
            inactive_threshold=60.0,
        )
        sub = await self.bus.js.pull_subscribe(self.bus.subjects.frames(source_id), stream=stream, config=config)
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
        self.log.info(
            "frame buffer rebuilt from the stream: %d frame references in %.1f s",
            count,
            time.monotonic() - started,
            extra={"source_id": source_id},
        )

    async def _watch_lag(self) -> None:
        """How far behind the results of the sources held are, for /healthz and the metrics: a registrator that
        stopped absorbing them (or cannot keep up) is unhealthy, whatever its connections say."""
        stream = results_stream_name(self.settings)
        while not self.stop_event.is_set():
            try:
                lags = [await self.bus.lag(stream, registrator_results_durable(source_id)) for source_id in list(self.held)]
                self.lag = ConsumerLag(sum(lag.pending for lag in lags), max((lag.oldest_age for lag in lags), default=0.0))
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
