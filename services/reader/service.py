"""Reader: one process serves one or many sources; each runs on its own and reports its health.

Replicas given the same sources share them by lease (shared/leases.py, role `reader`): each reads only the sources it
holds, so every source is read by one replica at a time, and a killed replica's sources move to the others within
`lease_ttl` and a renewal. Each take is a new run (a new run id): downstream keeps runs apart and ends one that stopped
without its ENDED (the registrator's `_new_run`).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from contextlib import AsyncExitStack, suppress
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis

from services.reader.finished import FinishedFiles
from services.reader.runner import ReaderCounters, SourceRunner
from services.reader.settings import ReaderSettings, SourceConfig
from services.reader.sources import is_live
from shared.backlog import BacklogGate
from shared.contracts import FrameRef, LifecycleState, SourceHealth, SourceState, SourceStatus
from shared.keys import RedisKeys
from shared.leases import SourceLeases, plan_moves
from shared.lifecycle import Service, StartupError
from shared.storage import SeaweedStorage
from shared.subjects import ROUTER_DURABLE, frames_stream, frames_stream_name

# An ended or failed source's last health stays readable for a while; a live one is refreshed.
_FINAL_HEALTH_TTL = 24 * 3600
ROLE = "reader"


def new_run_id() -> str:
    """A run id per take of a source: a restart (a crash, a replayed file, a move to another replica) counts from seq 0
    again, and downstream keeps each run apart by it (issue 15: a restarted reader's results were dropped as old)."""
    return f"{int(time.time()):x}{secrets.token_hex(3)}"


def is_finite_file(config: SourceConfig) -> bool:
    """A file read once: moved to another replica it would start over, so it stays where it is until it ends."""
    return not is_live(config) and not config.loop


@dataclass
class HeldRun:
    """A source whose lease this replica holds, and its run."""

    runner: SourceRunner
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


class ReaderService(Service[ReaderSettings]):
    name = "reader"

    def __init__(self, settings: ReaderSettings) -> None:
        super().__init__(settings)
        try:
            self.configs: list[SourceConfig] = settings.source_configs()
        except ValueError as exc:
            raise StartupError(str(exc)) from None
        self.by_id = {c.source_id: c for c in self.configs}
        self.keys = RedisKeys(settings)
        self.runners: list[SourceRunner] = []  # every run this process started, oldest first
        self.held: dict[str, HeldRun] = {}  # the sources whose lease this replica holds, with their runs
        # What /healthz shows: the last run of each source this replica reads or finished (not one it handed over).
        self.shown: dict[str, SourceRunner] = {}
        # Done for this replica: a file read to its end (by any replica: FinishedFiles), a live source that gave up here.
        self.done: set[str] = set()
        self._ending: set[str] = set()  # runs stopping (given up, lease lost): not taken again until they have ended
        self._wake = asyncio.Event()  # a run ended: the next round comes at once
        self._group: asyncio.TaskGroup | None = None
        self.leases: SourceLeases | None = None
        self.storage: SeaweedStorage | None = None
        self.redis: Redis | None = None
        self.finished: FinishedFiles | None = None
        self.stream_name = frames_stream_name(settings)
        # One reading serves every source for a moment: the backlog moves slowly next to frame rates. frames_ahead
        # (100) frames are seconds of the router's work, so a full gate looked at five times a second never lets it
        # run dry; each look is a consumer info request, which cost nats-server and the reader 0.2-0.4 ms a frame
        # at 20 a second (docs/performance.md).
        self.router_gate = BacklogGate(self.bus, self.stream_name, ROUTER_DURABLE, settings.frames_ahead + 1, 0.5, poll=0.2)
        self.counters = ReaderCounters.create(self.metrics)
        self.m_fps = self.metrics.gauge("fps", "frames read per second", ("source_id",))
        self.m_held = self.metrics.gauge("sources_held", "sources whose lease this replica holds")

    async def start(self, stack: AsyncExitStack) -> None:
        await self.open_bus(stack)
        await self.bus.ensure_stream(frames_stream(self.settings))
        self.redis = await self.open_redis(stack)
        self.finished = FinishedFiles(self.redis, self.keys)
        self.leases = SourceLeases(self.redis, self.keys, ROLE, self.instance, self.settings.lease_ttl)
        connections = self.settings.upload_concurrency * len(self.configs)
        self.storage = await self.open_storage(stack, max_connections=connections)

    def health(self) -> dict[str, Any]:
        return super().health() | {"sources": [r.health().model_dump(mode="json") for r in self.shown.values()]}

    async def run(self) -> None:
        for config in self.configs:
            await self._skip_if_finished(config, warn=True)
        reporter = asyncio.create_task(self._report_periodically())
        try:
            async with asyncio.TaskGroup() as tg:
                self._group = tg
                tg.create_task(self._hold_sources())
        finally:
            reporter.cancel()
        failed = [r for r in self.runners if r.state is SourceState.FAILED]
        # Exit 1 asks the restart policy (compose's on-failure) for another try: right for a camera that gave up,
        # which may be back, wrong for a file, which would be read again from its start and replay every frame
        # it published. A failed file says so on the bus (FAILED), in its health and in the log, and exits 0.
        if any(r.live for r in failed):
            self.exit_code = 1
        elif failed:
            self.log.error("%d file source(s) FAILED; exiting 0 so that no restart replays them", len(failed))

    # -- which sources this replica reads ---------------------------------------------------------

    async def _hold_sources(self) -> None:
        """Heartbeat, renew the leases held, take the sources hashing gives this replica, give up those it gives
        another, until every source is done or the reader stops; then give every source up (the others take them at
        once instead of after the lease's TTL)."""
        assert self.leases is not None
        interval = self.settings.lease_ttl / 3
        while not self.stop_event.is_set() and not self.done >= self.by_id.keys():
            self._wake.clear()
            try:
                await self._hold_round()
            except Exception as exc:  # noqa: BLE001 - Redis away: the next round retries
                # The runs go on: a camera must not stop for Redis, and while Redis is away no other replica can take
                # a lease either. The first renewal after it tells whether another replica held one meanwhile.
                self.log.warning("could not renew or move source leases: %r", exc)
            await self._pause_round(interval)
        await asyncio.gather(*(self._give_up(source_id) for source_id in list(self.held)))
        with suppress(Exception):  # Redis away at stop: the heartbeat simply runs out
            await self.leases.leave()

    async def _hold_round(self) -> None:
        assert self.leases is not None and self._group is not None
        replicas = await self.leases.heartbeat()
        for source_id in list(self.held):
            if source_id not in self._ending and not await self.leases.renew(source_id):
                self.log.warning("lease lost: another replica reads the source now", extra={"source_id": source_id})
                self._drop(source_id)
        for source_id in self.by_id.keys() - self.done - self.held.keys():
            await self._skip_if_finished(self.by_id[source_id])  # read to its end by another replica
        known = self.by_id.keys() - self.done
        take, give_up = plan_moves(self.instance, replicas, set(known), self.held.keys() | self._ending)
        for source_id in take:
            # Taken, then checked: a file another replica finished just before is not read again.
            if await self.leases.acquire(source_id):
                if await self._skip_if_finished(self.by_id[source_id]):
                    await self.leases.release(source_id)
                else:
                    self._start(source_id)
        for source_id in give_up:
            if source_id in self.held and source_id not in self._ending and not is_finite_file(self.by_id[source_id]):
                self._group.create_task(self._give_up(source_id))
        self.m_held.set(len(self.held))

    async def _pause_round(self, seconds: float) -> None:
        """Until the next round: `seconds`, cut short by a stop or a run that ended."""
        waits = {asyncio.ensure_future(self.stop_event.wait()), asyncio.ensure_future(self._wake.wait())}
        await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        for waiting in waits:
            waiting.cancel()

    async def _skip_if_finished(self, config: SourceConfig, warn: bool = False) -> bool:
        """True (and done) when the source is a file already read to its end, by this reader before or another."""
        assert self.finished is not None
        if is_live(config):
            return False
        done = await self.finished.previous(config)
        if done is None:
            return False
        self.done.add(config.source_id)
        if warn:
            self.log.warning(
                "source %s: this file was already read (%s at %s%s), so it is not read again; a new or changed "
                "file, another source_id, or deleting Redis key %s reads it",
                config.source_id,
                done.state.value,
                time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(done.at)),
                f": {done.error}" if done.error else "",
                self.keys.source_finished(config.source_id),
                extra={"source_id": config.source_id},
            )
        return True

    def _start(self, source_id: str) -> None:
        assert self.storage is not None and self._group is not None
        stop = asyncio.Event()
        runner = SourceRunner(
            self.by_id[source_id],
            self.settings,
            self.storage,
            self._publish_frame,
            lambda: self._wait_for_router(stop),
            self._report,
            self.counters,
            self.instance,
            stop,
            new_run_id(),
        )
        self.runners.append(runner)
        self.shown[source_id] = runner
        held = self.held[source_id] = HeldRun(runner, stop)
        held.task = self._group.create_task(self._run_source(held))

    async def _give_up(self, source_id: str) -> None:
        """Another replica should read it (or this one stops): stop the run, which says ENDED, then let the lease go."""
        held = self.held.get(source_id)
        if held is None or held.task is None:
            return
        self._ending.add(source_id)
        held.stop.set()
        await asyncio.wait({held.task})
        self.log.info("source given up", extra={"source_id": source_id})

    def _drop(self, source_id: str) -> None:
        """The lease is gone: another replica may read the source already, so stop at once (no lease to let go)."""
        held = self.held.pop(source_id, None)
        if held is not None:
            held.stop.set()
            if held.task is not None and not held.task.done():
                self._ending.add(source_id)
                held.task.add_done_callback(lambda _: self._ending.discard(source_id))

    async def _run_source(self, held: HeldRun) -> None:
        runner = held.runner
        source_id = runner.config.source_id
        try:
            await self._lifecycle(runner, SourceState.STARTED)
            await runner.run()
            final: LifecycleState = SourceState.FAILED if runner.state is SourceState.FAILED else SourceState.ENDED
            await self._lifecycle(runner, final)
            if runner.ran_to_end:
                await self._remember_finished(runner)
            if runner.ran_to_end or runner.state is SourceState.FAILED:
                # A camera that gave up stays FAILED on this replica (hashing keeps it here), as with one reader.
                self.done.add(source_id)
            self.log.info(
                "source %s: read %d, published %d, dropped %s%s",
                final.value,
                runner.frames_read,
                runner.frames_published,
                dict(runner.dropped) or 0,
                f" ({runner.last_error})" if final is SourceState.FAILED else "",
                extra={"source_id": source_id},
            )
        finally:
            if source_id not in self.done and self.shown.get(source_id) is runner:
                del self.shown[source_id]  # handed over: its health is the next holder's to tell
            if self.held.get(source_id) is held:  # not dropped meanwhile: the lease is still this run's
                del self.held[source_id]
                assert self.leases is not None
                with suppress(Exception):  # Redis away: the lease runs out by itself
                    await self.leases.release(source_id)
                self._ending.discard(source_id)
            self._wake.set()

    async def _lifecycle(self, runner: SourceRunner, state: LifecycleState) -> None:
        """Lifecycle on the frames stream, after the source's last frame: how downstream knows it is complete."""
        status = SourceStatus(
            source_id=runner.config.source_id,
            run=runner.run_id,
            state=state,
            wall_time=time.time(),
            frames_read=runner.frames_read,
            frames_published=runner.frames_published,
            frames_dropped=sum(runner.dropped.values()),
            last_seq=runner.last_seq,
            error=runner.last_error if state is SourceState.FAILED else None,
        )
        await self.bus.publish(self.bus.subjects.source_status(runner.config.source_id), status)

    async def _remember_finished(self, runner: SourceRunner) -> None:
        assert self.finished is not None
        try:
            await self.finished.record(runner.config, runner.state, runner.last_error)
        except Exception as exc:  # noqa: BLE001 - the file is done either way; a replay is the worst case
            self.log.warning("finished file not recorded: %r", exc, extra={"source_id": runner.config.source_id})

    async def _publish_frame(self, ref: FrameRef) -> None:
        await self.bus.publish(self.bus.subjects.frames(ref.source_id), ref)

    async def _wait_for_router(self, run_stop: asyncio.Event) -> None:
        """Backpressure for files: keep at most `frames_ahead` references waiting for the router; a run given up or
        a reader stopping stops waiting."""
        await self.router_gate.wait_open(lambda: run_stop.is_set() or self.stop_event.is_set())

    async def _report(self, health: SourceHealth) -> None:
        source_id = health.source_id
        self.m_fps.labels(source_id=source_id).set(health.fps)
        final = health.state.final
        ttl = _FINAL_HEALTH_TTL if final else max(3, int(3 * self.settings.status_interval))
        try:
            assert self.redis is not None
            await self.redis.set(self.keys.source_health(source_id), health.to_bytes(), ex=ttl)
            await self.bus.publish_core(self.bus.subjects.source_health(source_id), health)
        except Exception as exc:  # noqa: BLE001 - health is best effort; the frames matter more
            self.log.warning("source health not reported: %r", exc, extra={"source_id": source_id})

    async def _report_periodically(self) -> None:
        while True:
            await asyncio.sleep(self.settings.status_interval)
            for held in list(self.held.values()):
                await self._report(held.runner.health())
