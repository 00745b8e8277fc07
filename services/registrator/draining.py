"""Draining: a run whose source ended and whose routed results are all in (or that waited `drain_timeout` for
them) closes its events, waits for their proofs, says `drained` on the bus and is forgotten.

The decision (`SourceProgress.complete`) is the run's own; this unit only starts one drain per run, in the service's
task group, and watches for runs that wait too long: a routing summary whose results never all come (a worker lost
them past `task_max_age`) must not keep a run, and its memory, forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from services.registrator.closing import EventCloser
from services.registrator.leases import LeaseLost
from services.registrator.lifecycle import Lifecycle
from services.registrator.settings import RegistratorSettings
from services.registrator.sources import SourceBook
from services.registrator.state import RegistratorState
from shared.bus import Bus
from shared.contracts import SourceDrained, split_feed
from shared.lifecycle import Stopping


class Drainer:
    def __init__(
        self,
        life: Lifecycle,
        settings: RegistratorSettings,
        bus: Bus,
        book: SourceBook,
        state: RegistratorState,
        closer: EventCloser,
        group: asyncio.TaskGroup,
    ) -> None:
        self.life = life
        self.settings = settings
        self.bus = bus
        self.book = book
        self.state = state
        self.closer = closer
        self.group = group
        self.tasks: set[asyncio.Task[None]] = set()  # drains in flight

    def check(self, feed: str, *, timed_out: bool = False) -> None:
        """Start the run's drain if it is complete (or timed out after its end) and not draining already."""
        progress = self.book.sources[feed]
        if progress.draining or not (progress.complete() or (timed_out and progress.ended)):
            return
        progress.draining = True
        task = self.group.create_task(self._guarded(feed, timed_out))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def watch_timeouts(self) -> None:
        while not await self.life.pause(1.0):
            now = time.monotonic()
            for feed, progress in list(self.book.sources.items()):
                waited = now - progress.summary_at
                if progress.summary is not None and not progress.draining and waited > self.settings.drain_timeout:
                    self.check(feed, timed_out=True)

    async def _guarded(self, feed: str, timed_out: bool) -> None:
        try:
            await self._drain(feed, timed_out)
        except Exception:
            self.life.log.exception("drain failed", extra={"source_id": split_feed(feed)[0]})

    async def _drain(self, feed: str, timed_out: bool) -> None:
        progress = self.book.sources[feed]
        source_id, run = split_feed(feed)
        summary = progress.summary
        results = {model: window.count for model, window in progress.windows.items()}
        if timed_out:
            self.life.log.warning(
                "source drained after %.0f s without all results: routed %s, got %s",
                self.settings.drain_timeout,
                summary.tasks if summary else "?",
                results,
                extra={"source_id": source_id},
            )
        try:
            closing = [event for model in results for event in await self.closer.flush_tracker(feed, model)]
            for event in closing + self.book.tracker.close_source(feed):
                await self.closer.close(event)
        except (Stopping, LeaseLost):
            return  # the source's saved state stays: the next start, or the next holder, drains it
        # A first try that fails starts a retry before it ends, and an event being closed elsewhere (quiet, or by a
        # result) becomes a proof job once its record is saved.
        while progress.finalising:
            await asyncio.wait(set(progress.finalising))
        drained = SourceDrained(
            source_id=source_id,
            run=run,
            frames_routed=summary.frames_routed if summary else 0,
            tasks=summary.tasks if summary else {},
            shed=summary.shed if summary else {},
            results=results,
            events=progress.events,
            wall_time=time.time(),
        )
        await self.bus.publish_core(self.bus.subjects.drained(source_id), drained)
        self.life.log.info("source drained: %d event(s), results %s", progress.events, results, extra={"source_id": source_id})
        self.book.forget_drained(feed, progress.ended_at)
        # A copy of a result lives at most results_stream_max_age in RESULTS, and the last came within drain_timeout
        # of the run's end: runs that ended longer ago than both need no end time to tell their copies.
        horizon = time.time() - self.settings.results_stream_max_age - self.settings.drain_timeout
        expired = self.book.expire_ended(source_id, horizon)
        with contextlib.suppress(Stopping):  # its saved state stays: the next start drains it again, and finds nothing left to do
            await self.life.redis_must("drained source", lambda: self.state.forget_run(feed, list(results), expired))
