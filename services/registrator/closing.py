"""Writing events: their changes go into the source's fenced transaction, and a closed event goes to the proof pool.

Every write of a source's state goes through its lease (`SourceLeases.write_fenced`): a replica that lost the
source writes nothing more. The results' batch, a tracker flush and a closed event all queue their changes the same
way, here, so what a restart reads back is always what the records say.
"""

from __future__ import annotations

import asyncio
from collections import Counter

from redis.asyncio.client import Pipeline

from services.registrator.events import OpenEvent
from services.registrator.leases import LeaseLost, SourceLeases
from services.registrator.lifecycle import Lifecycle
from services.registrator.notices import Notices
from services.registrator.proof_pool import ProofPool
from services.registrator.sources import SourceBook
from services.registrator.state import RegistratorState
from shared.contracts import EventState, split_feed
from shared.event_store import EventStore
from shared.keys import TOTAL_EVENTS


class EventCloser:
    def __init__(
        self,
        life: Lifecycle,
        book: SourceBook,
        store: EventStore,
        state: RegistratorState,
        leases: SourceLeases,
        notices: Notices,
        pool: ProofPool,
    ) -> None:
        self.life = life
        self.book = book
        self.store = store
        self.state = state
        self.leases = leases
        self.notices = notices
        self.pool = pool

    async def queue_changes(
        self,
        pipe: Pipeline,
        kept: list[OpenEvent],
        records: list[OpenEvent],
        trackers: dict[tuple[str, str], bytes],
        tally: Counter[tuple[str, str]],
    ) -> None:
        """Into a source's transaction: its open events' saved state, their records, tracker states and counts."""
        for event in kept:
            self.state.keep(pipe, event)
        for event in records:
            await self.store.save_in(pipe, event.record())
        for (feed, model), data in trackers.items():
            self.state.tracker(pipe, feed, model, data)
        self.state.count(pipe, tally)

    async def flush_tracker(self, feed: str, model: str) -> list[OpenEvent]:
        """Object mode: the frames still in the tracker's reorder buffer are tracked before the feed's events close;
        what they open or extend is counted and saved as a batch of results would be. Returns what they closed."""
        tracker = self.book.tracker
        changed, closed = tracker.flush(feed, model)
        if not changed:
            return closed
        source_id = split_feed(feed)[0]
        tally: Counter[tuple[str, str]] = Counter()
        for event in changed:
            if event.state is EventState.CREATED:
                self.book.sources[feed].events += 1
                tally[(source_id, TOTAL_EVENTS)] += 1
                self.life.log.info("event %s opened at %.1f s", event.id, event.start, extra={"source_id": source_id})
        trackers = {pair: tracker.state_bytes(*pair) for pair in tracker.take_dirty(source_id)}

        async def fill(pipe: Pipeline) -> None:
            await self.queue_changes(pipe, changed, changed, trackers, tally)

        await self.life.redis_must("flushed events", lambda: self.leases.write_fenced(source_id, fill))
        return closed

    async def close(self, event: OpenEvent) -> None:
        """DONE, saved with the source's state (a restart finds it and cuts its proofs), then its proofs are cut.
        Raises LeaseLost, having dropped the source, when another replica holds it now."""
        event.state = EventState.DONE

        async def fill(pipe: Pipeline) -> None:
            await self.store.save_in(pipe, event.record())
            self.state.keep(pipe, event)

        # Out of the tracker and not yet a proof job: a drain meanwhile waits for this instead.
        closing: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        pending = self.book.sources[event.feed].finalising
        pending.add(closing)
        closing.add_done_callback(pending.discard)
        try:
            try:
                await self.life.redis_must("closed event", lambda: self.leases.write_fenced(event.source_id, fill))
            except LeaseLost:
                self.book.drop(event.source_id)  # the next holder read it back open, and closes it itself
                raise
            await self.notices.publish(event.record())
            self.pool.submit(event)
        finally:
            if not closing.done():  # a drop cancels it
                closing.set_result(None)
