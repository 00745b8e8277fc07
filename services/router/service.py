"""Router: one inference task per live model (subject to the routing rules) for every frame reference.

Any number of router replicas share one durable consumer of the frames stream, so each frame is
routed once. What they routed per source is counted in Redis, written before the frames are acked,
so the summary of an ended source is exact whichever replica writes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import Counter
from collections.abc import Coroutine
from contextlib import AsyncExitStack
from typing import Any

from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy
from redis.asyncio import Redis

from services.router.counts import FrameCount, RoutedCounts
from services.router.lanes import SourceLanes
from services.router.rules import RoutingRules
from services.router.settings import RouterSettings
from shared.backlog import BacklogGate
from shared.bus import Outgoing, fetch
from shared.contracts import (
    CropRequest,
    DropPolicy,
    FrameRef,
    Heartbeat,
    InferenceResult,
    InferenceTask,
    ModelKind,
    RoutingSummary,
    SourceState,
    SourceStatus,
)
from shared.discovery import live_instances
from shared.keys import ROUTED_FRAMES, ROUTED_SHED, ROUTED_TASKS, RedisKeys
from shared.lifecycle import Service, Stopping
from shared.subjects import (
    ROUTER_CROPS_DURABLE,
    ROUTER_DURABLE,
    Subjects,
    frames_stream_name,
    results_stream_name,
    task_stream_name,
    worker_durable,
)

Routed = tuple[Msg, FrameRef | SourceStatus]  # a message of the frames stream, parsed

# A backlog reading that left room for live frames serves this long (it only over-counts meanwhile, see
# BacklogGate.admits): at 10 fps a camera's frames need about two readings a second, not ten.
_LIVE_READING_SECONDS = 0.25


class RouterService(Service[RouterSettings]):
    name = "router"

    def __init__(self, settings: RouterSettings) -> None:
        super().__init__(settings)
        self.keys = RedisKeys(settings)
        self.redis: Redis | None = None
        self.rules = RoutingRules(settings.routing_rules)
        # Models that get tasks: model -> one instance's heartbeat (subject, kind). A model whose instances are all
        # gone stays here for model_grace, its tasks queued for the restart (issue 15: a worker restart was a gap).
        self.live: dict[str, Heartbeat] = {}
        self._last_seen: dict[str, float] = {}  # model -> when (monotonic) an instance of it was last live
        # model -> (live instances, their summed frames/s as their heartbeats report it): how much queued work is
        # live_backlog_seconds of it. A model in its grace has none here: its live frames wait for the restart.
        self.capacity: dict[str, tuple[int, float]] = {}
        self._gates: dict[str, BacklogGate] = {}  # model -> the gate WAIT frames wait at
        self._summaries: set[asyncio.Task[None]] = set()  # ended sources waiting to be summarised, off the routing path
        self.lanes = SourceLanes[Routed](self._route_lane, self._spawn_lane)
        self._tg: asyncio.TaskGroup | None = None
        self.frames_total = 0
        self.m_frames = self.metrics.counter("frames_routed", "frame references routed", ("source_id",))
        self.m_tasks = self.metrics.counter("tasks_routed", "tasks published", ("source_id", "model"))
        self.m_unrouted = self.metrics.counter("frames_without_models", "frames seen while no model was live", ("source_id",))
        self.m_skipped = self.metrics.counter("frames_skipped_by_rule", "frames a routing rule kept from a model", ("model",))
        self.m_shed = self.metrics.counter(
            "frames_shed",
            "live frames (and crops) given no task: the model's queue held live_backlog_seconds of work",
            ("source_id", "model"),
        )
        self.m_failed = self.metrics.counter("tasks_failed", "tasks that could not be published", ("model",))
        self.m_waits = self.metrics.counter("backpressure_waits", "times a WAIT frame waited for a model's backlog", ("model",))
        self.m_backlog = self.metrics.gauge("task_backlog", "tasks queued or in flight for a model", ("model",))
        self.m_crop_tasks = self.metrics.counter("crop_tasks", "crop tasks published (the cascade)", ("source_id", "model"))
        self.m_crops = self.metrics.counter("crops", "boxes sent to be classified (the cascade)", ("model",))
        self._misnamed: set[str] = set()  # crop-rule problems already logged
        self._started = time.monotonic()

    async def start(self, stack: AsyncExitStack) -> None:
        await self.open_bus(stack)
        self.redis = await self.open_redis(stack)
        self.counts = RoutedCounts(self.redis, self.keys)
        # The reader owns the frames stream: the router binds to it once it exists (see run).
        self.frames_stream = frames_stream_name(self.settings)
        await self._refresh_live()

    def health(self) -> dict[str, Any]:
        now = time.monotonic()
        restarting = sorted(m for m in self.live if self._last_seen.get(m, 0.0) < now - self._refresh_slack)
        return super().health() | {
            "live_models": sorted(self.live),
            "models_restarting": restarting,
            "frames_routed": self.frames_total,
            "frames_held": self.lanes.held(),  # per source: a lane that keeps a count here is waiting
        }

    # -- live models -----------------------------------------------------------------------------

    async def _refresh_live(self) -> None:
        assert self.redis is not None
        found = await live_instances(self.redis, self.keys)
        now = time.monotonic()
        for model, instances in found.items():
            if model not in self.live or self._last_seen.get(model, 0.0) < now - self._refresh_slack:
                self.log.info("model %s is live (%d instance(s))", model, len(instances), extra={"model": model})
            self.live[model], self._last_seen[model] = instances[0], now
            self.capacity[model] = (len(instances), sum(hb.fps for hb in instances))
        self._check_cascades()
        for model in self.live.keys() - found.keys():
            self.capacity.pop(model, None)
            since = now - self._last_seen.get(model, 0.0)
            if since > self.settings.model_grace:
                del self.live[model]
                self.log.warning(
                    "model %s has had no live instance for %.0f s: no tasks for it", model, since, extra={"model": model}
                )
            elif self._last_seen.get(model, 0.0) >= now - self._refresh_slack:
                self.log.warning(
                    "model %s has no live instance: its tasks are queued for up to %.0f s (model_grace)",
                    model,
                    self.settings.model_grace,
                    extra={"model": model},
                )

    @property
    def _refresh_slack(self) -> float:
        return 1.5 * self.settings.live_refresh_seconds

    async def _watch_live(self) -> None:
        while not await self.pause(self.settings.live_refresh_seconds):
            try:
                await self._refresh_live()
                for model in self.live:
                    queued = await self._gate(model).read()
                    if queued is not None:
                        self.m_backlog.labels(model=model).set(queued)
            except Exception as exc:  # noqa: BLE001 - keep the last view while Redis or NATS is away
                self.log.warning("could not refresh live models: %r", exc)

    # -- routing ---------------------------------------------------------------------------------

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._watch_live())
            self._tg = tg
            keeper = tg.create_task(self._keep_held_alive())
            crops = tg.create_task(self._route_crops()) if self.rules.cascades else None
            sub = await self.bus.bind_when_ready(
                self.frames_stream,
                ROUTER_DURABLE,
                self.stop_event,
                max_ack_pending=4 * self.settings.route_batch,
                ack_wait=self.settings.frames_ack_wait,
            )
            while sub is not None and not self.stop_event.is_set():
                for source_id, items in (await self._by_source(await fetch(sub, self.settings.route_batch, timeout=0.5))).items():
                    self.lanes.put(source_id, items)
            await self.lanes.close(grace=5.0)
            # A summary still waiting leaves its status unacked: the next router summarises the source.
            for task in self._summaries:
                task.cancel()
            keeper.cancel()
            if crops is not None:
                await crops  # ends with the stop: its batch in hand is routed and acked first

    async def _keep_held_alive(self) -> None:
        """In-progress acks, a third of frames_ack_wait apart, for every frame a lane holds: one that waits behind a
        full model queue or a Redis outage is not redelivered to another router and routed twice (issue 15)."""
        while True:
            await asyncio.sleep(self.settings.frames_ack_wait / 3)
            for msg, _ in self.lanes.held_items():
                with contextlib.suppress(Exception):  # NATS away: redelivery is the fallback
                    await msg.in_progress()

    def _spawn_lane(self, lane: Coroutine[Any, Any, None]) -> None:
        assert self._tg is not None
        self._tg.create_task(lane)  # in the service's task group: a lane that fails fails the router, as routing did

    async def _by_source(self, msgs: list[Msg]) -> dict[str, list[Routed]]:
        """The batch split by source, in order within each; a message that does not parse is dead-lettered and acked."""
        lanes: dict[str, list[Routed]] = {}
        for msg in msgs:
            item: FrameRef | SourceStatus | None
            if self.bus.subjects.is_source_status(msg.subject):
                item = await self.bus.decode(msg, SourceStatus)
            else:
                item = await self.bus.decode(msg, FrameRef)
            if item is None:
                await msg.ack()
                continue
            lanes.setdefault(item.source_id, []).append((msg, item))
        return lanes

    async def _route_lane(self, items: list[Routed]) -> None:
        """One source's messages: frames between two lifecycle messages go out together; a lifecycle message waits
        for what came before it."""
        frames: list[tuple[Msg, FrameRef]] = []
        try:
            for msg, item in items:
                if isinstance(item, FrameRef):
                    frames.append((msg, item))
                    continue
                await self._route_frames(frames)
                frames = []
                if item.state in (SourceState.ENDED, SourceState.FAILED):
                    # Beside the routing, not in its way: a summary may wait summary_timeout for other replicas.
                    # It acks the status when done.
                    task = asyncio.create_task(self._summarise(item, msg))
                    self._summaries.add(task)
                    task.add_done_callback(self._summaries.discard)
                else:
                    await msg.ack()
            await self._route_frames(frames)
        except Stopping:
            pass  # stopped while Redis was away: the frames in hand are routed again by the next router

    async def _route_frames(self, frames: list[tuple[Msg, FrameRef]]) -> None:
        if not frames:
            return
        counted: list[tuple[Msg, FrameCount]] = []
        skipped: Counter[str] = Counter()
        plans: list[tuple[str, FrameCount, Outgoing]] = []  # (model, frame's count, its task)
        now = time.time()
        for msg, frame in frames:
            count = FrameCount(frame.source_id, frame.feed, frame.seq, [ROUTED_FRAMES])
            counted.append((msg, count))
            if not self.live:
                self.m_unrouted.labels(source_id=frame.source_id).inc()
            for model, hb in list(self.live.items()):
                if self.rules.takes_crops(model):
                    continue  # crops only: they come from its detection model's results (_route_crops)
                if not self.rules.wants(model, frame):
                    skipped[model] += 1
                    continue
                if frame.policy is DropPolicy.WAIT:
                    await self._wait_for_room(model)
                elif not await self._room_for_live(model):
                    count.fields.append(ROUTED_SHED + model)
                    continue
                task = InferenceTask.encode(msg.data, model, now)
                subject = self.bus.subjects.task(hb.subject)
                plans.append((model, count, Outgoing(subject, task, InferenceTask.id_for(frame, model))))
        # Published together: the acks come back pipelined instead of one round trip per task.
        outcomes = await self.bus.publish_many([out for _, _, out in plans])
        unrouted: set[int] = set()  # ids of the counts of frames with a task not published
        for (model, count, _), outcome in zip(plans, outcomes, strict=True):
            if outcome is not None:
                self.m_failed.labels(model=model).inc()
                self.log.warning("task not published, frame given back: %r", outcome, extra={"model": model, "seq": count.seq})
                unrouted.add(id(count))
                continue
            count.fields.append(ROUTED_TASKS + model)
        # A frame whose task could not be published (NATS away past publish_many's retries) is given back, neither
        # counted nor acked: routed again, its tasks that did go out are dropped by the stream as copies.
        routed = [c for _, c in counted if id(c) not in unrouted]
        # Counted before the frames are acked: no replica's work goes uncounted, and none twice (counts.py).
        fresh = await self.redis_must("routed counts", lambda: self.counts.add(routed))
        self._count_metrics([c for c, new in zip(routed, fresh, strict=True) if new], skipped)
        self.frames_total += len(routed)
        for msg, frame_count in counted:
            if id(frame_count) in unrouted:
                await msg.nak(delay=1.0)
            else:
                await msg.ack()

    # -- the cascade: crops of detections for a second model ---------------------------------------

    async def _route_crops(self) -> None:
        """Detection results -> crop tasks for the models whose `on` rule names their model. One durable consumer
        shared by the replicas: a result is cropped once, and none is lost across a restart (redelivered until
        acked; a task routed twice is dropped by its stream as a copy). A consumer created now starts with the
        results that come after: crops of frames from before the cascade was configured are of no use."""
        sub = await self.bus.bind_when_ready(
            results_stream_name(self.settings),
            ROUTER_CROPS_DURABLE,
            self.stop_event,
            filter_subject=self.bus.subjects.results_all,
            deliver_policy=DeliverPolicy.NEW,
            max_ack_pending=4 * self.settings.route_batch,
            ack_wait=self.settings.frames_ack_wait,
        )
        while sub is not None and not self.stop_event.is_set():
            msgs = await fetch(sub, self.settings.route_batch, timeout=0.5)
            try:
                await self._crop_batch(msgs)
            except Stopping:
                return  # unacked: redelivered to the next router

    async def _crop_batch(self, msgs: list[Msg]) -> None:
        plans: list[tuple[Msg, str, Outgoing]] = []  # (its result's message, model, crop task)
        now = time.time()
        for msg in msgs:
            result = await self.bus.decode(msg, InferenceResult)
            if result is None or result.kind is not ModelKind.DETECTION:
                continue
            for model in self.rules.cascades.get(result.model, ()):
                hb = self.live.get(model)
                if hb is None or hb.kind is not ModelKind.CLASSIFICATION:
                    continue  # not live (its crops are not queued for it: they are cheap to lose), or misnamed
                boxes = self.rules.crops(model, result)
                if not boxes:
                    continue
                if result.frame.policy is DropPolicy.WAIT:
                    await self._wait_for_room(model)
                elif not await self._room_for_live(model):
                    self.m_shed.labels(source_id=result.frame.source_id, model=model).inc()
                    continue
                task = InferenceTask(
                    frame=result.frame, model=model, routed_at=now, crop=CropRequest(of=result.model, boxes=boxes)
                )
                plans.append((msg, model, Outgoing.of(self.bus.subjects.task(hb.subject), task)))
                self.m_crops.labels(model=model).inc(len(boxes))
        outcomes = await self.bus.publish_many([out for _, _, out in plans])
        failed = {id(msg) for (msg, _, _), outcome in zip(plans, outcomes, strict=True) if outcome is not None}
        for (msg, model, _), outcome in zip(plans, outcomes, strict=True):
            if outcome is None:
                self.m_crop_tasks.labels(source_id=Subjects.source_of(msg.subject), model=model).inc()
            else:
                self.m_failed.labels(model=model).inc()
                self.log.warning("crop task not published, result given back: %r", outcome, extra={"model": model})
        for msg in msgs:
            if id(msg) in failed:
                await msg.nak(delay=1.0)  # its tasks that did go out are dropped by the stream as copies
            else:
                await msg.ack()

    def _check_cascades(self) -> None:
        """Crop rules against the live models' kinds: logged once per problem, as the live view is all there is."""
        for model, rule in self.rules.rules.items():
            if rule.on is None:
                continue
            source, target = self.live.get(rule.on.model), self.live.get(model)
            problems = []
            if source is None and time.monotonic() - self._started > self.settings.model_grace:
                problems.append(f"routing_rules.{model}.on.model names {rule.on.model}, which no live worker serves")
            if source is not None and source.kind is not ModelKind.DETECTION:
                problems.append(
                    f"routing_rules.{model}.on.model names {rule.on.model}, a {source.kind.value} model: name a detection model"
                )
            if target is not None and target.kind is not ModelKind.CLASSIFICATION:
                problems.append(
                    f"routing_rules.{model} has an `on` rule, but {model} is a {target.kind.value} model: crops are classified"
                )
            for problem in problems:
                if problem not in self._misnamed:
                    self._misnamed.add(problem)
                    self.log.error("%s; no crops for it", problem, extra={"model": model})

    def _count_metrics(self, counted: list[FrameCount], skipped: Counter[str]) -> None:
        # Per batch, not per frame: the labels lookup is a measurable share of routing.
        frames: Counter[str] = Counter()
        tasks: Counter[tuple[str, str]] = Counter()
        shed: Counter[tuple[str, str]] = Counter()
        for c in counted:
            frames[c.source_id] += 1
            for f in c.fields[1:]:
                if f.startswith(ROUTED_TASKS):
                    tasks[(c.source_id, f[len(ROUTED_TASKS) :])] += 1
                else:
                    shed[(c.source_id, f[len(ROUTED_SHED) :])] += 1
        for source_id, n in frames.items():
            self.m_frames.labels(source_id=source_id).inc(n)
        for (source_id, model), n in tasks.items():
            self.m_tasks.labels(source_id=source_id, model=model).inc(n)
        for (source_id, model), n in shed.items():
            self.m_shed.labels(source_id=source_id, model=model).inc(n)
        for model, n in skipped.items():
            self.m_skipped.labels(model=model).inc(n)

    def _gate(self, model: str) -> BacklogGate:
        gate = self._gates.get(model)
        if gate is None:
            stream, durable = task_stream_name(self.settings, model), worker_durable(model)
            # task_backlog_limit (32) tasks are most of a second of a CPU worker's work: a full gate looked at ten
            # times a second keeps it fed, where fifty looks a second cost the router 0.4 ms a frame.
            limit = self.settings.task_backlog_limit
            gate = self._gates[model] = BacklogGate(self.bus, stream, durable, limit, 0.5, poll=0.1)
        return gate

    async def _room_for_live(self, model: str) -> bool:
        """Whether a live frame's task for `model` would join at most live_backlog_seconds of queued work (tasks
        queued or in the workers' hands, at their summed reported rate). Shedding the frame that would wait, not
        an older one, wastes nothing: a queued task that is dropped has cost its wait, and its answer was due first."""
        instances, fps = self.capacity.get(model, (0, 0.0))
        if not instances or fps <= 0 or not self.settings.live_backlog_seconds:
            # Restarting (its frames wait for it, issue 15), started but not yet measured (its heartbeat says so
            # after its first batch), or shedding turned off.
            return True
        # Two per instance at least, one in hand and one ready, whatever the rate says.
        limit = max(2 * instances, math.ceil(self.settings.live_backlog_seconds * fps))
        # A full queue is asked again once one task's time has passed: sooner finds it full still, later leaves
        # the workers idle while frames are shed.
        return await self._gate(model).admits(limit, _LIVE_READING_SECONDS, full_for=1 / fps)

    async def _wait_for_room(self, model: str) -> None:
        """A file in as-fast-as-possible mode waits here instead of overflowing the capped task queue. Only its own
        lane waits; the frames it holds are kept from redelivery by _keep_held_alive."""
        gate = self._gate(model)
        await gate.wait_open(
            lambda: model not in self.live or self.stop_event.is_set(), on_wait=self.m_waits.labels(model=model).inc
        )
        if gate.last is not None:
            self.m_backlog.labels(model=model).set(gate.last)

    async def _summarise(self, status: SourceStatus, msg: Msg) -> None:
        """Once every replica has counted the source's frames, say how many tasks each model got; then ack the status,
        kept from redelivery meanwhile by in-progress acks."""
        try:
            await self._summarise_run(status, msg)
        except Stopping:
            return  # unacked: redelivered to the next router
        await msg.ack()

    async def _summarise_run(self, status: SourceStatus, msg: Msg) -> None:
        assert self.redis is not None
        deadline = time.monotonic() + self.settings.summary_timeout
        keep_alive = _KeepAlive(self.settings.frames_ack_wait, [msg])
        while True:
            await keep_alive.tick()
            counts = await self.redis_must("routed counts", lambda: self.counts.read(status.feed))
            if counts.get(ROUTED_FRAMES, 0) >= status.frames_published:
                break
            if time.monotonic() >= deadline:
                self.log.warning(
                    "routed %d of the %d frames the reader published; summarising what was routed",
                    counts.get(ROUTED_FRAMES, 0),
                    status.frames_published,
                    extra={"source_id": status.source_id},
                )
                break
            if await self.pause(0.05):
                raise Stopping("summary")
        summary = RoutingSummary(
            source_id=status.source_id,
            run=status.run,
            frames_routed=counts.get(ROUTED_FRAMES, 0),
            tasks={k[len(ROUTED_TASKS) :]: v for k, v in counts.items() if k.startswith(ROUTED_TASKS)},
            shed={k[len(ROUTED_SHED) :]: v for k, v in counts.items() if k.startswith(ROUTED_SHED)},
            wall_time=time.time(),
        )
        await self.bus.publish(self.bus.subjects.routed(status.source_id), summary)
        await self.redis_must("routed counts", lambda: self.counts.forget(status.feed))
        self.log.info(
            "source routed: %d frames, tasks %s, shed %s",
            summary.frames_routed,
            summary.tasks,
            summary.shed,
            extra={"source_id": status.source_id},
        )


class _KeepAlive:
    """In-progress acks for messages held through a long wait, a third of their ack_wait apart."""

    def __init__(self, ack_wait: float, msgs: list[Msg]) -> None:
        self.every = ack_wait / 3
        self.msgs = msgs
        self.next = time.monotonic() + self.every

    async def tick(self) -> None:
        if time.monotonic() < self.next:
            return
        self.next = time.monotonic() + self.every
        for msg in self.msgs:
            with contextlib.suppress(Exception):  # NATS away: redelivery is the fallback
                await msg.in_progress()
