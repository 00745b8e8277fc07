"""Router: one inference task per live model for every frame reference."""

from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict
from contextlib import AsyncExitStack
from typing import Any

from nats.aio.msg import Msg
from redis.asyncio import Redis

from services.router.settings import RouterSettings
from shared.bus import fetch
from shared.contracts import DropPolicy, FrameRef, Heartbeat, InferenceTask, RoutingSummary, SourceState, SourceStatus
from shared.discovery import live_instances
from shared.keys import RedisKeys
from shared.lifecycle import Service
from shared.subjects import ROUTER_DURABLE, frames_stream_name, task_stream_name, worker_durable


class RouterService(Service[RouterSettings]):
    name = "router"

    def __init__(self, settings: RouterSettings) -> None:
        super().__init__(settings)
        self.keys = RedisKeys(settings)
        self.redis: Redis | None = None
        self.live: dict[str, Heartbeat] = {}  # model -> one live instance's heartbeat (subject, kind)
        self.frames_routed: Counter[str] = Counter()
        self.tasks_routed: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self.m_frames = self.metrics.counter("frames_routed", "frame references routed", ("source_id",))
        self.m_tasks = self.metrics.counter("tasks_routed", "tasks published", ("source_id", "model"))
        self.m_unrouted = self.metrics.counter("frames_without_models", "frames seen while no model was live", ("source_id",))
        self.m_failed = self.metrics.counter("tasks_failed", "tasks that could not be published", ("model",))
        self.m_waits = self.metrics.counter("backpressure_waits", "times a WAIT frame waited for a model's backlog", ("model",))

    async def start(self, stack: AsyncExitStack) -> None:
        await self.open_bus(stack)
        self.redis = await self.open_redis(stack)
        # The reader owns the frames stream: the router binds to it once it exists (see run).
        self.frames_stream = frames_stream_name(self.settings)
        await self._refresh_live()

    def health(self) -> dict[str, Any]:
        return super().health() | {"live_models": sorted(self.live), "frames_routed": sum(self.frames_routed.values())}

    async def _refresh_live(self) -> None:
        assert self.redis is not None
        found = await live_instances(self.redis, self.keys)
        now_live = {model: instances[0] for model, instances in found.items()}
        for model in now_live.keys() - self.live.keys():
            self.log.info("model %s is live (%d instance(s))", model, len(found[model]), extra={"model": model})
        for model in self.live.keys() - now_live.keys():
            self.log.warning("model %s has no live instance: no tasks for it", model, extra={"model": model})
        self.live = now_live

    async def _watch_live(self) -> None:
        while not self.stop_event.is_set():
            try:
                await asyncio.wait_for(self.stop_event.wait(), timeout=self.settings.live_refresh_seconds)
            except asyncio.TimeoutError:
                pass
            try:
                await self._refresh_live()
            except Exception as exc:  # noqa: BLE001 - keep the last view while Redis is away
                self.log.warning("could not refresh live models: %r", exc)

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._watch_live())
            sub = await self.bus.bind_when_ready(
                self.frames_stream, ROUTER_DURABLE, self.stop_event, max_ack_pending=4 * self.settings.route_batch
            )
            while sub is not None and not self.stop_event.is_set():
                for msg in await fetch(sub, self.settings.route_batch, timeout=0.5):
                    await self._handle(msg)

    async def _handle(self, msg: Msg) -> None:
        if self.bus.subjects.is_source_status(msg.subject):
            status = await self.bus.decode(msg, SourceStatus)
            if status is not None and status.state in (SourceState.ENDED, SourceState.FAILED):
                await self._summarise(status.source_id)
        else:
            frame = await self.bus.decode(msg, FrameRef)
            if frame is not None:
                await self._route(frame)
        await msg.ack()

    async def _route(self, frame: FrameRef) -> None:
        self.frames_routed[frame.source_id] += 1
        self.m_frames.labels(source_id=frame.source_id).inc()
        if not self.live:
            self.m_unrouted.labels(source_id=frame.source_id).inc()
            return
        now = time.time()
        for model, hb in list(self.live.items()):
            if frame.policy is DropPolicy.WAIT:
                await self._wait_for_backlog(model)
            task = InferenceTask(frame=frame, model=model, routed_at=now)
            try:
                await self.bus.publish(self.bus.subjects.task(hb.subject), task, timeout=5.0)
            except Exception as exc:  # noqa: BLE001 - counted; the frame still goes to the other models
                self.m_failed.labels(model=model).inc()
                self.log.warning("task not published: %r", exc, extra={"model": model, "frame_id": frame.frame_id})
                continue
            self.tasks_routed[frame.source_id][model] += 1
            self.m_tasks.labels(source_id=frame.source_id, model=model).inc()

    async def _wait_for_backlog(self, model: str) -> None:
        """A file in as-fast-as-possible mode waits here instead of overflowing the capped task queue."""
        stream, durable = task_stream_name(self.settings, model), worker_durable(model)
        waited = False
        while model in self.live and await self.bus.backlog(stream, durable) >= self.settings.task_backlog_limit:
            if not waited:
                self.m_waits.labels(model=model).inc()
                waited = True
            await asyncio.sleep(0.02)

    async def _summarise(self, source_id: str) -> None:
        summary = RoutingSummary(
            source_id=source_id,
            frames_routed=self.frames_routed.pop(source_id, 0),
            tasks=dict(self.tasks_routed.pop(source_id, Counter())),
            wall_time=time.time(),
        )
        await self.bus.publish(self.bus.subjects.routed(source_id), summary)
        self.log.info("source routed: %d frames, tasks %s", summary.frames_routed, summary.tasks, extra={"source_id": source_id})
