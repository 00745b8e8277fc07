import time

import aiohttp
from redis.asyncio import Redis

from fleet.servers import free_ports
from services.router.service import RouterService
from services.router.settings import RouterSettings
from shared.bus import Bus, fetch
from shared.contracts import FrameRef, Heartbeat, InferenceTask, ModelKind, RoutingSummary, SourceState, SourceStatus
from shared.keys import RedisKeys
from shared.metrics import counter_value
from shared.subjects import frames_stream, results_stream, task_stream, worker_durable
from tests.integration.helpers import running, wait_for
from tests.support.settings import MakeSettings


async def test_router_routes_every_frame_to_each_live_model_and_summarises(
    bus: Bus, redis: Redis, make_settings: MakeSettings
) -> None:
    port = free_ports(1)[0]
    # No model_grace: the model's last instance goes away below and must get no task at once (a restarting model
    # keeps its tasks for the grace: test_work_queue.py).
    settings = make_settings(RouterSettings, metrics_port=port, model_grace=0)
    keys = RedisKeys(settings)
    # What a reader, a worker of model "m1" and the registrator would have declared.
    await bus.ensure_stream(frames_stream(settings))
    await bus.ensure_stream(results_stream(settings))
    tasks = task_stream(settings, "m1", "M1Inference", max_age=30, cap=100)
    await bus.ensure_stream(tasks)
    hb = Heartbeat.idle("m1", ModelKind.DETECTION, "M1Inference", "w1")
    await redis.set(keys.heartbeat("m1", "w1"), hb.to_bytes(), ex=10)
    summaries = await bus.nc.subscribe(bus.subjects.routed("cam0"))

    router = RouterService(settings)
    async with running(router, lambda r: "m1" in r.live):
        for seq in range(5):
            ref = FrameRef(
                source_id="cam0",
                seq=seq,
                pts=seq / 10,
                wall_time=time.time(),
                url="http://127.0.0.1:8080/1,01",
                width=4,
                height=4,
            )
            await bus.publish(bus.subjects.frames(ref.source_id), ref)
        await bus.js.publish(bus.subjects.frames("cam0"), b"garbage")
        status = SourceStatus(
            source_id="cam0", state=SourceState.ENDED, wall_time=time.time(), frames_read=5, frames_published=5, last_seq=4
        )
        await bus.publish(bus.subjects.source_status("cam0"), status)
        summary = RoutingSummary.from_bytes((await summaries.next_msg(timeout=10)).data)
        assert summary.frames_routed == 5 and summary.tasks == {"m1": 5}
        assert counter_value(router.bus.dead_letters, subject=bus.subjects.frames("cam0")) == 1

        sub = await bus.durable_pull(tasks.name, worker_durable("m1"))
        routed = [InferenceTask.from_bytes(m.data) for m in await fetch(sub, 10, timeout=2)]
        assert [t.frame.frame_id for t in routed] == [f"cam0:{i}" for i in range(5)]
        assert {t.model for t in routed} == {"m1"}

        # The model's last instance goes away: its frames get no task.
        await redis.delete(keys.heartbeat("m1", "w1"))
        await wait_for(lambda: not router.live, 5, "router to see the model gone")
        ref = FrameRef(source_id="cam1", seq=0, pts=0, wall_time=time.time(), url="http://127.0.0.1:8080/1,02", width=4, height=4)
        await bus.publish(bus.subjects.frames(ref.source_id), ref)
        await wait_for(lambda: counter_value(router.m_unrouted, source_id="cam1") == 1, 5, "unrouted frame")
        assert await fetch(sub, 10, timeout=0.5) == []

        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
                text = await resp.text()
            async with http.get(f"http://127.0.0.1:{port}/healthz") as resp:
                health = await resp.json()
        assert 'vigil_router_tasks_routed_total{model="m1",source_id="cam0"} 5.0' in text
        assert 'vigil_router_frames_without_models_total{source_id="cam1"} 1.0' in text
        assert health["ok"] is True and health["live_models"] == []
