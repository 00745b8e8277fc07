"""Recovery: picking a source up where it was left, by this replica before a restart or by another before a move.

What was saved of a source (its `SourceSession`, one read: dedup windows, routing summaries, ended runs, tracker
states, open events) goes back into memory; the frames its previous holder acked are read again from the frames
stream, which keeps them, so proofs get their pre-roll. At start, once per replica, stores written by an older
version are brought up to date before anything new is written.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime

from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from services.registrator.events import OpenEvent
from services.registrator.lifecycle import Lifecycle
from services.registrator.settings import RegistratorSettings
from services.registrator.sources import SourceBook
from services.registrator.state import RegistratorState, SourceSession
from services.registrator.tracking import TrackerStateError
from shared.bus import Bus, fetch
from shared.contracts import EventClose, EventState, FrameRef
from shared.event_store import EventStore
from shared.subjects import frames_stream_name
from shared.ttl import parse_ttl


def rebuild_since(now: float, settings: RegistratorSettings) -> float:
    """Unix time from which a taken source's frames are read back: every frame whose JPEG still exists (ttl_bucket).

    Not only what the longest event and its pre-roll need: behind a pipeline running minutes late (a busy detector),
    the results still to come, and the events saved open or owed their proofs, are of frames read that long ago,
    which the previous holder had acked. A frame older than ttl_bucket is of no use: its JPEG is gone."""
    return now - parse_ttl(settings.ttl_bucket)


async def upgrade_stores(store: EventStore, state: RegistratorState, window_frames: int, log: logging.Logger) -> None:
    """Records written before the listing indexes existed are indexed, and the registrator's state as older versions
    kept it (global keys, seen sets) becomes each source's session, once, before anything new is written."""
    if (indexed := await store.backfill_indexes()) is not None:
        log.info("listing indexes built over %d existing event record(s)", indexed)
    if upgraded := await state.upgrade_layout(window_frames):
        log.info("%d key(s) of an older version's registrator state became per-source sessions", upgraded)


class Recovery:
    def __init__(self, life: Lifecycle, settings: RegistratorSettings, bus: Bus, book: SourceBook) -> None:
        self.life = life
        self.settings = settings
        self.bus = bus
        self.book = book

    def apply(self, saved: SourceSession) -> list[OpenEvent]:
        """Pick up a source where its previous holder (or this replica before a restart) stopped; returns the closed
        events still owed their proofs."""
        book, tracker = self.book, self.book.tracker
        for (feed, model), window in saved.windows.items():
            book.sources[feed].windows[model] = window
        for summary in saved.summaries:
            progress = book.sources[summary.feed]
            progress.summary, progress.summary_at = summary, time.monotonic()
        for feed in saved.ended:
            book.sources[feed].ended, book.sources[feed].ended_at = True, saved.ended_at.get(feed, 0.0)
        book.drained_until |= {feed: t for feed, t in saved.ended_at.items() if feed not in saved.ended}
        for (feed, model), data in saved.trackers.items():
            try:
                tracker.load_state(feed, model, data)
            except TrackerStateError as exc:
                self.life.log.warning("object tracker not restored, its ids start again: %s", exc, extra={"source_id": feed})
        owed = []
        for event in saved.open_events:
            if event.state in (EventState.CREATED, EventState.PENDING):
                try:
                    tracker.adopt(event)
                    # Its wall clock starts now: if no result of it comes after the restart, it still closes.
                    book.last_result[(event.feed, event.model)] = time.monotonic()
                except ValueError:  # a scene event, saved before event_mode became object: it ends here
                    event.closed_by = EventClose.SOURCE_END
                    owed.append(event)
            else:
                owed.append(event)
            book.sources[event.feed].events += 1
        return owed

    async def rebuild_ring(self, source_id: str) -> None:
        """The frames seen before the restart or move were acked: read them again from the stream, which keeps them.

        Up to the stream's last message at this moment: what comes after arrives through the frames consumer,
        so a source that never pauses cannot keep this going (the old loop ended only after a silent second)."""
        s, bus = self.settings, self.bus
        stream = frames_stream_name(s)
        last = (await bus.js.stream_info(stream)).state.last_seq
        since = datetime.fromtimestamp(rebuild_since(time.time(), s), UTC)
        config = ConsumerConfig(
            deliver_policy=DeliverPolicy.BY_START_TIME,
            opt_start_time=since,
            ack_policy=AckPolicy.NONE,
            filter_subject=bus.subjects.frames(source_id),
            inactive_threshold=60.0,
        )
        sub = await bus.js.pull_subscribe(bus.subjects.frames(source_id), stream=stream, config=config)
        count, reached = 0, 0
        started = time.monotonic()
        try:
            while reached < last and not self.life.stop_event.is_set() and (msgs := await fetch(sub, 1000, timeout=1.0)):
                for msg in msgs:
                    ref = await bus.decode(msg, FrameRef)
                    if ref is not None:
                        self.book.ring.add(ref)
                        count += 1
                reached = msgs[-1].metadata.sequence.stream
        finally:
            await sub.unsubscribe()
        self.life.log.info(
            "frame buffer rebuilt from the stream: %d frame references in %.1f s",
            count,
            time.monotonic() - started,
            extra={"source_id": source_id},
        )
