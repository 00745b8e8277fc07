"""Reader: one process serves one or many sources; each runs on its own and reports its health."""

from __future__ import annotations

import asyncio
import secrets
import time
from contextlib import AsyncExitStack
from typing import Any

from redis.asyncio import Redis

from services.reader.finished import FinishedFiles
from services.reader.runner import ReaderCounters, SourceRunner
from services.reader.settings import ReaderSettings, SourceConfig
from shared.backlog import BacklogGate
from shared.contracts import FrameRef, LifecycleState, SourceHealth, SourceState, SourceStatus
from shared.keys import RedisKeys
from shared.lifecycle import Service, StartupError
from shared.storage import SeaweedStorage
from shared.subjects import ROUTER_DURABLE, frames_stream, frames_stream_name

# An ended or failed source's last health stays readable for a while; a live one is refreshed.
_FINAL_HEALTH_TTL = 24 * 3600


class ReaderService(Service[ReaderSettings]):
    name = "reader"

    def __init__(self, settings: ReaderSettings) -> None:
        super().__init__(settings)
        try:
            self.configs: list[SourceConfig] = settings.source_configs()
        except ValueError as exc:
            raise StartupError(str(exc)) from None
        self.keys = RedisKeys(settings)
        self.runners: list[SourceRunner] = []
        # This start's run id, in every frame and status: a restart (a crash, a replayed file) counts from seq 0 again,
        # and downstream keeps each run apart by it (issue 15: a restarted reader's results were dropped as old ones).
        self.run_id = f"{int(time.time()):x}{secrets.token_hex(3)}"
        self.storage: SeaweedStorage | None = None
        self.redis: Redis | None = None
        self.finished: FinishedFiles | None = None
        self.stream_name = frames_stream_name(settings)
        # One reading serves every source for a moment: the backlog moves slowly next to frame rates.
        self.router_gate = BacklogGate(self.bus, self.stream_name, ROUTER_DURABLE, settings.frames_ahead + 1, 0.1, poll=0.05)
        self.counters = ReaderCounters.create(self.metrics)
        self.m_fps = self.metrics.gauge("fps", "frames read per second", ("source_id",))

    async def start(self, stack: AsyncExitStack) -> None:
        await self.open_bus(stack)
        await self.bus.ensure_stream(frames_stream(self.settings))
        self.redis = await self.open_redis(stack)
        self.finished = FinishedFiles(self.redis, self.keys)
        connections = self.settings.upload_concurrency * len(self.configs)
        self.storage = await self.open_storage(stack, max_connections=connections)

    def health(self) -> dict[str, Any]:
        return super().health() | {"sources": [r.health().model_dump(mode="json") for r in self.runners]}

    async def run(self) -> None:
        assert self.storage is not None and self.finished is not None
        for config in self.configs:
            done = await self.finished.previous(config)
            if done is not None:
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
                continue
            runner = SourceRunner(
                config,
                self.settings,
                self.storage,
                self._publish_frame,
                self._wait_for_router,
                self._report,
                self.counters,
                self.instance,
                self.stop_event,
                self.run_id,
            )
            self.runners.append(runner)
        reporter = asyncio.create_task(self._report_periodically())
        try:
            async with asyncio.TaskGroup() as tg:
                for runner in self.runners:
                    tg.create_task(self._run_source(runner))
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

    async def _run_source(self, runner: SourceRunner) -> None:
        source_id = runner.config.source_id
        await self._lifecycle(runner, SourceState.STARTED)
        await runner.run()
        final: LifecycleState = SourceState.FAILED if runner.state is SourceState.FAILED else SourceState.ENDED
        await self._lifecycle(runner, final)
        if runner.ran_to_end:
            await self._remember_finished(runner)
        self.log.info(
            "source %s: read %d, published %d, dropped %s%s",
            final.value,
            runner.frames_read,
            runner.frames_published,
            dict(runner.dropped) or 0,
            f" ({runner.last_error})" if final is SourceState.FAILED else "",
            extra={"source_id": source_id},
        )

    async def _lifecycle(self, runner: SourceRunner, state: LifecycleState) -> None:
        """Lifecycle on the frames stream, after the source's last frame: how downstream knows it is complete."""
        status = SourceStatus(
            source_id=runner.config.source_id,
            run=self.run_id,
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

    async def _wait_for_router(self) -> None:
        """Backpressure for files: keep at most `frames_ahead` references waiting for the router."""
        await self.router_gate.wait_open(self.stop_event.is_set)

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
            for runner in self.runners:
                await self._report(runner.health())
