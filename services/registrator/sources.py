"""What a registrator replica keeps in memory of the sources it holds, and the one place that forgets a source.

Every unit of the registrator (intake, closing, draining, the proof pool, the session manager) reads and writes
this book; keeping it in one object means a source given up, dropped or drained leaves nothing behind in any of
them. It writes nothing: what must survive a restart is saved by the units, in Redis.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from dataclasses import dataclass, field

from services.registrator.events import EventTracker, OpenEvent
from services.registrator.frames import FrameRing
from services.registrator.leases import SourceLeases
from services.registrator.objects import ObjectEventTracker
from services.registrator.window import SeenWindow
from shared.contracts import RoutingSummary, split_feed

# An event per tracked object (issue 18), or the seed's one per label in view (event_mode=scene).
Tracker = EventTracker | ObjectEventTracker


@dataclass
class SourceProgress:
    """What the registrator knows of one source run (a feed), to tell when all its results are in."""

    ended: bool = False
    ended_at: float = 0.0  # wall time of the source's ENDED (or FAILED) status
    summary: RoutingSummary | None = None
    summary_at: float = 0.0
    windows: dict[str, SeenWindow] = field(default_factory=dict)  # per model: which results were absorbed
    result_pts: dict[str, float] = field(default_factory=dict)
    # What a drain waits for: its proof jobs, and the events being closed (their DONE record being saved, a proof job
    # once it is), without which a drain would forget the frames their proofs are about to need.
    finalising: set[asyncio.Future[None]] = field(default_factory=set)
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


class SourceBook:
    def __init__(self, tracker: Tracker, ring: FrameRing, leases: SourceLeases) -> None:
        self.tracker = tracker
        self.ring = ring
        self.leases = leases  # only to let go of a dropped source's token: the units write through their own
        self.sources: defaultdict[str, SourceProgress] = defaultdict(SourceProgress)  # per feed
        self.held: dict[str, HeldSource] = {}  # the sources whose lease this replica holds
        # Per drained source, when its run ended: a result of a frame read before that is a late copy.
        self.drained_until: dict[str, float] = {}
        # When (monotonic) the last result of each (feed, model) arrived. On a live source an event whose results
        # stopped closes after event_gap of this clock (issue 15: a dark camera or a dead detector left it open
        # until its frames expired).
        self.last_result: dict[tuple[str, str], float] = {}
        # Files read as fast as possible (WAIT): their results come when the workers get to them, so their events
        # close by stream time only.
        self.unpaced: set[str] = set()
        self.finalising: dict[str, OpenEvent] = {}  # closed events whose proofs are being cut, by id

    def feeds_of(self, source_id: str) -> list[str]:
        return [feed for feed in self.sources if split_feed(feed)[0] == source_id]

    def finalising_of(self, source_id: str) -> list[asyncio.Future[None]]:
        """Its feeds' proof jobs and events being closed (SourceProgress.finalising)."""
        return [task for feed in self.feeds_of(source_id) for task in self.sources[feed].finalising]

    def drop(self, source_id: str) -> None:
        """The lease is gone: stop its consumers and proofs at once and forget it, writing nothing more (the next
        holder reads back what was saved), and its lease's token with it, so no late write passes the fence."""
        held = self.held.get(source_id)
        if held is None:
            return
        held.stop.set()
        for task in self.finalising_of(source_id):
            task.cancel()
        self.forget_source(source_id)
        self.leases.forget(source_id)

    def forget_source(self, source_id: str) -> None:
        def mine(feed: str) -> bool:
            return split_feed(feed)[0] == source_id

        self.held.pop(source_id, None)
        for feed in {f for f in self.sources if mine(f)} | {k[0] for k in self.tracker.open if mine(k[0])}:
            self.tracker.forget(feed)
            self.sources.pop(feed, None)
        for model_key in [k for k in self.last_result if mine(k[0])]:
            del self.last_result[model_key]
        for feed in [f for f in self.drained_until if mine(f)]:
            del self.drained_until[feed]
        for event_id in [i for i, e in self.finalising.items() if e.source_id == source_id]:
            del self.finalising[event_id]
        self.unpaced = {f for f in self.unpaced if not mine(f)}
        self.ring.forget_source(source_id)

    def forget_drained(self, feed: str, ended_at: float) -> None:
        """A run that drained: nothing of it is needed any more, except when it ended, to tell late copies."""
        self.ring.forget(feed)
        self.unpaced.discard(feed)
        for key in [k for k in self.last_result if k[0] == feed]:
            del self.last_result[key]
        self.drained_until[feed] = ended_at
        del self.sources[feed]

    def expire_ended(self, source_id: str, before: float) -> list[str]:
        """The source's drained runs that ended before `before`, forgotten: no copy of their results can come any
        more, so their end times need not tell one apart (a camera reconnecting for months starts a run each time)."""
        expired = [f for f, t in self.drained_until.items() if t < before and split_feed(f)[0] == source_id]
        for feed in expired:
            del self.drained_until[feed]
        return expired
