"""Registrator: results become events; closed events get a proof clip and key frame; ended sources drain.

This module is wiring only: settings become units, start opens the connections, run wires the units to them and
runs them in one task group, health reads them. The units, each in its own module:

- `sources.SourceBook`: what this replica keeps in memory of the sources it holds, and forgetting a source;
- `sessions.SessionManager`: the leases (take, give up, drop a source) and each held source's consumers;
- `recovery`: reading back a source's saved state and frame buffer when it is taken;
- `intake.Intake`: results and frames in, events and progress out, written before the messages are acked;
- `closing.EventCloser`: a source's fenced writes of events, and closing an event;
- `proof_pool.ProofPool`: the bounded pool of proof jobs, inside the task group;
- `draining.Drainer`: ended runs drained once all their results are in;
- `retention.Retention`: the sweeps by age and by disk budget.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

from nats.aio.msg import Msg
from prometheus_client import Counter

from services.registrator.closing import EventCloser
from services.registrator.draining import Drainer
from services.registrator.events import EventRules, EventTracker, OpenEvent
from services.registrator.frames import FrameRing
from services.registrator.intake import Intake, IntakeMetrics
from services.registrator.leases import SourceLeases
from services.registrator.notices import Notices
from services.registrator.objects import ObjectEventTracker, ObjectRules
from services.registrator.proof_pool import ProofMetrics, ProofPool
from services.registrator.recovery import Recovery, upgrade_stores
from services.registrator.retention import Retention, RetentionMetrics
from services.registrator.sessions import LagMetrics, SessionManager
from services.registrator.settings import RegistratorSettings
from services.registrator.sources import HeldSource, SourceBook, SourceProgress, Tracker
from services.registrator.state import RegistratorState
from shared.event_store import EventStore
from shared.keys import RedisKeys
from shared.lifecycle import Service
from shared.storage import SeaweedStorage
from shared.subjects import results_stream


@dataclass(frozen=True)
class Units:
    """The units of one run, wired to the connections start() opened."""

    book: SourceBook
    pool: ProofPool
    drainer: Drainer
    intake: Intake
    sessions: SessionManager


class RegistratorService(Service[RegistratorSettings]):
    name = "registrator"

    def __init__(self, settings: RegistratorSettings) -> None:
        super().__init__(settings)
        self.keys = RedisKeys(settings)
        # An event per tracked object (issue 18), or the seed's one per label in view (event_mode=scene).
        self.tracker: Tracker = (
            ObjectEventTracker(ObjectRules.from_settings(settings))
            if settings.event_mode == "object"
            else EventTracker(EventRules.from_settings(settings))
        )
        self.ring = FrameRing(settings.ring_max_frames)
        self.notices = Notices(self.bus, settings.notify_update_interval, self.metrics)  # event notices, for the notifier
        self.store: EventStore | None = None
        self.state: RegistratorState  # set in start(), with Redis
        self.leases: SourceLeases  # set in start(), with Redis
        self.storage: SeaweedStorage | None = None
        self.units: Units | None = None  # wired by run()
        # Registered here, not when run() wires the units: /metrics shows them from the first scrape.
        self.intake_metrics = IntakeMetrics.register(self.metrics)
        self.proof_metrics = ProofMetrics.register(self.metrics)
        self.lag_metrics = LagMetrics.register(self.metrics)
        self.retention_metrics = RetentionMetrics.register(self.metrics)

    async def start(self, stack: AsyncExitStack) -> None:
        await self.open_bus(stack)
        await self.bus.ensure_stream(results_stream(self.settings))
        redis = await self.open_redis(stack)
        self.store = EventStore(redis, self.keys)
        self.state = RegistratorState(redis, self.keys)
        await upgrade_stores(self.store, self.state, self.settings.dedup_window_frames, self.log)
        self.leases = SourceLeases(redis, self.keys, self.instance, self.settings.lease_ttl)
        self.storage = await self.open_storage(stack)

    async def run(self) -> None:
        # Events still open at shutdown keep their PENDING record; finalising ones get the proof pool's handover.
        async with asyncio.TaskGroup() as group:
            units = self.units = self._wire(group)
            group.create_task(units.pool.run())
            group.create_task(units.drainer.watch_timeouts())
            group.create_task(units.sessions.watch_lag())
            if Retention.wanted(self.settings):
                assert self.store is not None and self.storage is not None
                group.create_task(Retention(self, self.settings, self.store, self.storage, self.retention_metrics).run())
            group.create_task(units.sessions.hold_sources())

    def _wire(self, group: asyncio.TaskGroup) -> Units:
        """Each unit gets what it uses, no more. Built here, not in __init__: the connections come from start()
        (or, in the unit tests of decisions, from the test)."""
        assert self.store is not None
        s, bus = self.settings, self.bus
        book = SourceBook(self.tracker, self.ring, self.leases)
        pool = ProofPool(self, s, book, self.store, self.state, self.storage, self.notices, self.proof_metrics, group)
        closer = EventCloser(self, book, self.store, self.state, self.leases, self.notices, pool)
        drainer = Drainer(self, s, bus, book, self.state, closer, group)
        intake = Intake(self, s, bus, book, self.state, self.leases, self.notices, closer, drainer, self.intake_metrics)
        recovery = Recovery(self, s, bus, book)
        sessions = SessionManager(
            self,
            s,
            self.instance,
            bus,
            book,
            self.leases,
            self.state,
            recovery,
            intake,
            self._on_results,
            closer,
            self.lag_metrics,
            group,
        )
        return Units(book, pool, drainer, intake, sessions)

    async def _on_results(self, source_id: str, msgs: list[Msg]) -> None:
        """Every batch of results enters through here: one seam, where a test plays a registrator that cannot absorb."""
        await self._running().intake.on_results(source_id, msgs)

    def health(self) -> dict[str, Any]:
        s, units = self.settings, self.units
        lag = units.sessions.lag if units else None
        held = units.book.held if units else {}
        lagging = lag is not None and (lag.pending > s.results_lag_max_pending or lag.oldest_age > s.results_lag_max_age)
        doc = super().health() | {
            "open_events": len(self.tracker.open),
            "finalising": len(units.book.finalising) if units else 0,
            "ring_frames": len(self.ring),
            "sources_held": sorted(held),
            "ring_ready": all(h.ring_ready.is_set() for h in held.values()),
            "results_pending": lag.pending if lag else None,
            "results_oldest_seconds": round(lag.oldest_age, 1) if lag else None,
            "lagging": lagging,
        }
        doc["ok"] = doc["ok"] and not lagging
        return doc

    # -- the units' state, by the names it had before the split (the tests read it) ------------------

    def _running(self) -> Units:
        if self.units is None:
            raise RuntimeError("the registrator's units exist only once run() has started")
        return self.units

    @property
    def sources(self) -> defaultdict[str, SourceProgress]:
        return self._running().book.sources

    @property
    def held(self) -> dict[str, HeldSource]:
        return self._running().book.held

    @property
    def finalising(self) -> dict[str, OpenEvent]:
        return self._running().book.finalising

    @property
    def _tasks(self) -> set[asyncio.Task[None]]:
        """Proof jobs and drains in flight."""
        units = self._running()
        return units.pool.jobs | units.drainer.tasks

    @property
    def m_results(self) -> Counter:
        return self.intake_metrics.results

    @property
    def m_duplicates(self) -> Counter:
        return self.intake_metrics.duplicates

    @property
    def m_stale(self) -> Counter:
        return self.intake_metrics.stale
