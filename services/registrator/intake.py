"""Intake: what the consumers of a held source bring in becomes events and progress.

Results are deduplicated by window, applied to the event tracker, and written with the registrator's own state in
one fenced transaction before they are acked (a replica killed at any point loses no result and counts none
twice). Frames fill the frame buffer; a source's statuses end its runs. Events whose results stopped close by
wall time. Every change that may complete a run asks the drainer.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass

from nats.aio.msg import Msg
from prometheus_client import Counter as MetricCounter
from redis.asyncio.client import Pipeline

from services.registrator.clips import SEGMENT_SECONDS
from services.registrator.closing import EventCloser
from services.registrator.draining import Drainer
from services.registrator.events import OpenEvent
from services.registrator.leases import SourceLeases
from services.registrator.lifecycle import Lifecycle
from services.registrator.notices import Notices
from services.registrator.objects import ObjectEventTracker
from services.registrator.settings import RegistratorSettings
from services.registrator.sources import SourceBook
from services.registrator.state import RegistratorState
from services.registrator.window import Seen, SeenWindow
from shared.bus import Bus
from shared.contracts import (
    DropPolicy,
    EventClose,
    EventState,
    FrameRef,
    InferenceResult,
    ModelKind,
    RoutingSummary,
    SourceState,
    SourceStatus,
    split_feed,
)
from shared.keys import TOTAL_ERRORS, TOTAL_EVENTS, TOTAL_INFERRED, TOTAL_LINE
from shared.metrics import Metrics

RECORD_REFRESH_SECONDS = 1.0  # a growing event's record is rewritten at most this often


@dataclass(frozen=True)
class IntakeMetrics:
    results: MetricCounter
    duplicates: MetricCounter
    stale: MetricCounter
    past: MetricCounter
    crossings: MetricCounter
    batches: MetricCounter

    @classmethod
    def register(cls, metrics: Metrics) -> IntakeMetrics:
        return cls(
            results=metrics.counter("results", "results absorbed", ("source_id", "model")),
            duplicates=metrics.counter("duplicate_results", "results seen before (redelivery)", ("model",)),
            stale=metrics.counter("stale_results", "results of a run already drained (dropped)", ("model",)),
            past=metrics.counter(
                "past_window_results", "results more than dedup_window_frames behind the newest (taken for seen)", ("model",)
            ),
            crossings=metrics.counter(
                "line_crossings", "tracked objects crossing a configured line", ("source_id", "line", "label", "direction")
            ),
            # With results_total: the results a batch shares its work among (absorb_interval).
            batches=metrics.counter(
                "result_batches", "batches of results taken to absorb, each in one Redis transaction", ("source_id",)
            ),
        )


class Intake:
    def __init__(
        self,
        life: Lifecycle,
        settings: RegistratorSettings,
        bus: Bus,
        book: SourceBook,
        state: RegistratorState,
        leases: SourceLeases,
        notices: Notices,
        closer: EventCloser,
        drainer: Drainer,
        metrics: IntakeMetrics,
    ) -> None:
        self.life = life
        self.settings = settings
        self.bus = bus
        self.book = book
        self.tracker = book.tracker
        self.state = state
        self.leases = leases
        self.notices = notices
        self.closer = closer
        self.drainer = drainer
        self.metrics = metrics

    # -- frames and source lifecycle -------------------------------------------------------------

    async def on_frames_msg(self, msg: Msg) -> None:
        if self.bus.subjects.is_source_status(msg.subject):
            status = await self.bus.decode(msg, SourceStatus)
            if status is not None and status.state.final:
                await self._end_feed(status.feed, status.wall_time, hold=[msg])
                self.drainer.check(status.feed)
            elif status is not None and status.state is SourceState.STARTED:
                await self._new_run(status, msg)
        else:
            ref = await self.bus.decode(msg, FrameRef)
            if ref is not None:
                self.book.ring.add(ref)
        await msg.ack()

    async def _end_feed(self, feed: str, wall_time: float, hold: list[Msg]) -> None:
        await self.life.redis_must("source ended", lambda: self.state.mark_ended(feed, wall_time), hold=hold)
        progress = self.book.sources[feed]
        progress.ended, progress.ended_at = True, wall_time

    async def _new_run(self, status: SourceStatus, msg: Msg) -> None:
        """A new run of a source: an older run that never ended (its reader was killed) is over. Its open events close
        with the frames they have, and it drains with the results it got: no summary will come for it."""
        for feed, progress in list(self.book.sources.items()):
            if split_feed(feed)[0] != status.source_id or feed == status.feed or progress.ended:
                continue
            self.life.log.warning(
                "a new run of the source started: the run %s ends here, with what it has",
                split_feed(feed)[1],
                extra={"source_id": status.source_id},
            )
            await self._end_feed(feed, status.wall_time, hold=[msg])
            self.drainer.check(feed, timed_out=True)

    # -- results ---------------------------------------------------------------------------------

    async def on_results(self, source_id: str, msgs: list[Msg]) -> None:
        """Apply a batch, write its effects (records and the registrator's own state) in one pipeline,
        and only then ack it: a registrator killed at any point loses no result and counts none twice."""
        touched: dict[str, OpenEvent] = {}
        closed: list[OpenEvent] = []
        seen: set[tuple[str, str]] = set()  # (feed, model) whose window changed
        summaries: list[RoutingSummary] = []
        tally: Counter[tuple[str, str]] = Counter()
        # Counted as taken, before any of its results: whoever sees a result counted sees its batch counted too.
        self.metrics.batches.labels(source_id=source_id).inc()
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
            if event.saved_at == 0.0 or event.frames == 2 or now - event.saved_at >= RECORD_REFRESH_SECONDS
        ]
        for event in records:
            event.saved_at = now

        # Taken once, outside the transaction: a retry after Redis came back writes the same.
        trackers = {pair: self.tracker.state_bytes(*pair) for pair in self.tracker.take_dirty(source_id)}
        for (source, line, label, direction), n in self.tracker.take_crossings(source_id).items():
            tally[(source, f"{TOTAL_LINE}{line}:{label}:{direction}")] += n
            self.metrics.crossings.labels(source_id=source, line=line, label=label, direction=direction).inc(n)

        async def fill(pipe: Pipeline) -> None:
            kept = [event for event in touched.values() if event.state is not EventState.DONE]
            await self.closer.queue_changes(pipe, kept, records, trackers, tally)
            for feed, model in seen:
                self.state.window(pipe, feed, model, self.book.sources[feed].windows[model])
            for summary in summaries:
                self.state.summary(pipe, summary)

        # One transaction, only while this replica holds the source: written whole or not at all, so a retry after
        # Redis came back counts nothing twice, and a replica that lost the source writes nothing (LeaseLost).
        await self.life.redis_must("results", lambda: self.leases.write_fenced(source_id, fill), hold=msgs)
        await self.notices.publish_all(event.record() for event in records)
        for msg in msgs:
            await msg.ack()
        for event in closed:
            await self.closer.close(event)
        for summary in summaries:
            progress = self.book.sources[summary.feed]
            progress.summary, progress.summary_at = summary, time.monotonic()
        for feed in {f for f, _ in seen} | {s.feed for s in summaries}:
            self._prune(feed)
            self.drainer.check(feed)

    def _absorb(
        self, result: InferenceResult, touched: dict[str, OpenEvent], closed: list[OpenEvent], tally: Counter[tuple[str, str]]
    ) -> bool:
        """Apply one result in memory, counting it into `tally`; False for one seen before (redelivered)."""
        frame = result.frame
        feed = frame.feed
        if frame.wall_time <= self.book.drained_until.get(feed, 0.0):
            # A copy that outlived the stream's duplicate window: its source has drained, and an event it opened
            # now would never close (issue 15).
            self.metrics.stale.labels(model=result.model).inc()
            return False
        progress = self.book.sources[feed]
        window = progress.windows.get(result.model)
        if window is None:
            window = progress.windows[result.model] = SeenWindow(self.settings.dedup_window_frames)
        verdict = window.add(frame.seq)
        if verdict is not Seen.NEW:
            (self.metrics.duplicates if verdict is Seen.DUPLICATE else self.metrics.past).labels(model=result.model).inc()
            return False
        self.book.last_result[(feed, result.model)] = time.monotonic()
        if frame.policy is DropPolicy.WAIT:
            self.book.unpaced.add(feed)
        self.metrics.results.labels(source_id=frame.source_id, model=result.model).inc()
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
                    self.life.log.info("event %s opened at %.1f s", event.id, event.start, extra={"source_id": frame.source_id})
                touched[event.id] = event
            closed.extend(ended)
        elif result.crop_of is not None and isinstance(self.tracker, ObjectEventTracker):  # a cascade's crops: sub-labels
            touched.update((event.id, event) for event in self.tracker.attach_crops(result))
        return True

    def _prune(self, feed: str) -> None:
        """Keep the frames any open or finalising event, or one about to open, may still need."""
        progress = self.book.sources[feed]
        if not progress.result_pts:
            return
        horizon = min(progress.result_pts.values()) - self.settings.event_gap
        pinned = [e.start for e in self.book.finalising.values() if e.feed == feed]
        oldest_open = self.tracker.oldest_start(feed)
        if oldest_open is not None:
            pinned.append(oldest_open)
        # A clip starts up to a segment before its pre-roll (segment_span); a second more for the frame before it.
        horizon = min([horizon, *pinned]) - self.settings.pre_roll - SEGMENT_SECONDS - 1.0
        self.book.ring.prune_before(feed, horizon)

    async def close_quiet(self, source_id: str) -> None:
        """Live sources: events whose model has sent no result for event_gap of wall time close with what they have,
        marked NO_RESULTS (frames still come: the detector is out) or NO_FRAMES (the camera went dark)."""
        now, gap = time.monotonic(), self.settings.event_gap
        for (feed, model), last in list(self.book.last_result.items()):
            if split_feed(feed)[0] != source_id or now - last <= gap or feed in self.book.unpaced:
                continue
            if not any(key[:2] == (feed, model) for key in self.tracker.open) and not self.tracker.buffered(feed, model):
                continue
            # Frames after the last result: the camera streams on and the detector is out; none: the camera is dark.
            answered = self.book.sources[feed].result_pts.get(model, 0.0)
            blind = (self.book.ring.latest_pts(feed) or 0.0) > answered
            why = EventClose.NO_RESULTS if blind else EventClose.NO_FRAMES
            closing = await self.closer.flush_tracker(feed, model) + self.tracker.close_quiet(feed, model, why)
            for event in closing:
                self.life.log.warning(
                    "event %s closed: no result of %s for %.1f s (%s)",
                    event.id,
                    model,
                    now - last,
                    why.value,
                    extra={"source_id": event.source_id},
                )
                await self.closer.close(event)
