"""The session manager: which sources this replica holds, and their consumers.

A replica holds a source only through its lease (`shared/leases.py`). Every third of the lease's TTL it
heartbeats, renews what it holds (dropping what it lost), takes what the assignment gives it and gives up what
the assignment now gives another replica. Taking reads back what was saved (recovery) before the source's results and
frames are consumed; giving up stops the consumers, lets the proofs finish and only then releases the lease, so the
next holder reads back everything this one wrote. Each source's consumers run in the service's task group.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from prometheus_client import Gauge

from services.registrator.closing import EventCloser
from services.registrator.intake import Intake
from services.registrator.leases import LeaseLost, SourceLeases, plan_moves
from services.registrator.lifecycle import Lifecycle
from services.registrator.proof_pool import HANDOVER_SECONDS
from services.registrator.recovery import Recovery
from services.registrator.settings import RegistratorSettings
from services.registrator.sources import HeldSource, SourceBook
from services.registrator.state import RegistratorState
from shared.bus import Bus, ConsumerLag, fetch
from shared.lifecycle import Stopping
from shared.metrics import Metrics
from shared.subjects import (
    Subjects,
    frames_stream_name,
    registrator_frames_durable,
    registrator_results_durable,
    results_stream_name,
)

LAG_CHECK_SECONDS = 2.0

OnResults = Callable[[str, list[Msg]], Awaitable[None]]
OnMessage = Callable[[Msg], Awaitable[None]]


@dataclass(frozen=True)
class LagMetrics:
    pending: Gauge
    oldest: Gauge

    @classmethod
    def register(cls, metrics: Metrics) -> LagMetrics:
        return cls(
            pending=metrics.gauge("results_pending", "results waiting to be absorbed (JetStream's count)"),
            oldest=metrics.gauge("results_oldest_seconds", "age of the oldest result not yet absorbed"),
        )


class SessionManager:
    def __init__(
        self,
        life: Lifecycle,
        settings: RegistratorSettings,
        instance: str,
        bus: Bus,
        book: SourceBook,
        leases: SourceLeases,
        state: RegistratorState,
        recovery: Recovery,
        intake: Intake,
        on_results: OnResults,  # the intake's, through the service: one entry for every batch of results
        closer: EventCloser,
        metrics: LagMetrics,
        group: asyncio.TaskGroup,
    ) -> None:
        self.life = life
        self.settings = settings
        self.instance = instance
        self.bus = bus
        self.book = book
        self.leases = leases
        self.state = state
        self.recovery = recovery
        self.intake = intake
        self.on_results = on_results
        self.closer = closer
        self.metrics = metrics
        self.group = group
        self.moving: set[str] = set()  # sources being taken or given up right now
        self.lag: ConsumerLag | None = None  # of the held sources' results, for /healthz

    # -- which sources this replica holds ------------------------------------------------------------

    async def hold_sources(self) -> None:
        """Heartbeat, renew the leases held, take the sources hashing gives this replica, give up those it gives
        another; at stop, give every source up (the others take them at once instead of after the lease's TTL)."""
        interval = self.settings.lease_ttl / 3
        while not self.life.stop_event.is_set():
            try:
                await self._hold_round()
            except Stopping:
                break
            except Exception as exc:  # noqa: BLE001 - Redis or NATS away: the leases lapse, and the next round retries
                self.life.log.warning("could not renew or move source leases: %r", exc)
            if await self.life.pause(interval):
                break
        with contextlib.suppress(Exception):  # Redis away at stop: the leases and the heartbeat simply run out
            await asyncio.gather(*(self.give_up(source_id) for source_id in list(self.book.held)))
            await self.leases.leave()

    async def _hold_round(self) -> None:
        replicas = await self.leases.heartbeat()
        for source_id in list(self.book.held):
            if source_id not in self.moving and not await self.leases.renew(source_id):
                self.life.log.warning("lease lost: another replica holds the source now", extra={"source_id": source_id})
                self.book.drop(source_id)
        known = await self._known_sources()
        take, give_up = plan_moves(self.instance, replicas, known, set(self.book.held) | self.moving)
        for source_id in take:
            if await self.leases.acquire(source_id):
                self.moving.add(source_id)
                self.group.create_task(self.take(source_id))
        for source_id in give_up:
            if source_id in self.book.held and source_id not in self.moving:
                self.moving.add(source_id)
                self.group.create_task(self.give_up(source_id))

    async def _known_sources(self) -> set[str]:
        """Every source with a message in the frames or results stream: each subject of both is one source's."""
        subjects = await self.bus.stream_subjects(frames_stream_name(self.settings), ">")
        subjects |= await self.bus.stream_subjects(results_stream_name(self.settings), ">")
        return {Subjects.source_of(subject) for subject in subjects}

    async def take(self, source_id: str) -> None:
        """Read back what the previous holder saved, then consume the source's results and frames."""
        held = self.book.held[source_id] = HeldSource(source_id)
        try:
            saved = await self.state.load_source(source_id)
            owed = self.recovery.apply(saved)
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
            self._consume_in(held, self._consume(held, frames, self.intake.on_frames_msg))
            if saved or await self.bus.acked_any(frames_stream, frames_durable):
                await self.recovery.rebuild_ring(source_id)
            held.ring_ready.set()
            self.life.log.info(
                "source taken: %d open event(s), %d owed proofs",
                len(saved.open_events) - len(owed),
                len(owed),
                extra={"source_id": source_id},
            )
            for event in owed:
                await self.closer.close(event)
        except (Stopping, LeaseLost):
            pass
        except Exception as exc:  # noqa: BLE001 - NATS or Redis away: let go, and the next round takes it again
            self.life.log.warning("could not take the source: %r", exc, extra={"source_id": source_id})
            self.book.drop(source_id)
            with contextlib.suppress(Exception):
                await self.leases.release(source_id)
        finally:
            self.moving.discard(source_id)

    def _consume_in(self, held: HeldSource, work: Coroutine[Any, Any, None]) -> None:
        task = self.group.create_task(work)
        held.consumers.add(task)
        task.add_done_callback(held.consumers.discard)

    async def give_up(self, source_id: str) -> None:
        """Another replica should hold it (or this one stops): stop consuming, let its proofs finish, forget it, and
        only then let the lease go, so the next holder reads back everything this one wrote."""
        held = self.book.held.get(source_id)
        if held is None:
            return
        self.moving.add(source_id)
        try:
            held.stop.set()
            if held.consumers:
                await asyncio.wait(set(held.consumers))
            proofs = self.book.finalising_of(source_id)
            # At stop, the proof pool gives every proof the same time once, for all sources together; a proof cut
            # short stays DONE in the saved state and the next holder cuts it.
            if proofs and not self.life.stop_event.is_set():
                await asyncio.wait(proofs, timeout=HANDOVER_SECONDS)
            self.book.forget_source(source_id)
            await self.leases.release(source_id)
            self.life.log.info("source given up to another replica", extra={"source_id": source_id})
        finally:
            self.moving.discard(source_id)

    # -- consumers -----------------------------------------------------------------------------------

    async def _consume(self, held: HeldSource, sub: JetStreamContext.PullSubscription, handle: OnMessage) -> None:
        try:
            while not self.life.stop_event.is_set() and not held.stop.is_set():
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

    async def _consume_results(self, held: HeldSource, sub: JetStreamContext.PullSubscription) -> None:
        msgs: list[Msg] = []
        try:
            while not self.life.stop_event.is_set() and not held.stop.is_set():
                msgs = await fetch(sub, 256, timeout=0.5)
                fetched_at = time.monotonic()
                if held.stop.is_set():
                    raise LeaseLost(held.source_id)  # given up or dropped while the pull waited: not this session's
                if msgs:
                    await self.on_results(held.source_id, msgs)
                    msgs = []
                    # A camera's results come one by one (at 10 fps, each model's answer alone), and each batch pays
                    # for the tracker's saved state and a Redis transaction: waiting out the interval lets the next
                    # batch take what arrived meanwhile. A registrator behind has spent the interval, and waits not.
                    rest = self.settings.absorb_interval - (time.monotonic() - fetched_at)
                    if rest > 0:
                        await self.life.pause(rest)
                await self.intake.close_quiet(held.source_id)
        except Stopping:
            return  # stopped while Redis was away: the batch in hand is redelivered to the next start
        except LeaseLost:
            # Another replica holds the source now (or this session ended): the batch in hand goes back at once.
            for msg in msgs:
                with contextlib.suppress(Exception):
                    await msg.nak()
            # A source being given up is not dropped: give_up lets its proofs finish and releases the lease, so the
            # next holder need not wait out the TTL.
            if self.book.held.get(held.source_id) is held and held.source_id not in self.moving:
                self.life.log.warning("lease lost: the source is handed over", extra={"source_id": held.source_id})
                self.book.drop(held.source_id)
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def watch_lag(self) -> None:
        """How far behind the results of the sources held are, for /healthz and the metrics: a registrator that
        stopped absorbing them (or cannot keep up) is unhealthy, whatever its connections say."""
        stream = results_stream_name(self.settings)
        while not self.life.stop_event.is_set():
            try:
                lags = [await self.bus.lag(stream, registrator_results_durable(source_id)) for source_id in list(self.book.held)]
                self.lag = ConsumerLag(sum(lag.pending for lag in lags), max((lag.oldest_age for lag in lags), default=0.0))
                self.metrics.pending.set(self.lag.pending)
                self.metrics.oldest.set(self.lag.oldest_age)
            except Exception as exc:  # noqa: BLE001 - NATS away: /healthz says so already; the last figures stay
                self.life.log.debug("could not read the results' lag: %r", exc)
            await self.life.pause(LAG_CHECK_SECONDS)
