"""Router throughput and CPU per frame, next to a bare loop publishing the same tasks straight to the task subjects.

Two live models (heartbeats in Redis, task streams as their workers declare them) whose "workers" only
ack. Frames are published to the frames stream first; then `python -m services.router` routes them, and
its CPU is read between its first and its last routed frame. The bare loop, in this process, builds and
publishes the same tasks with the same pipelining (one batch of JetStream publishes awaited together).
"""

from __future__ import annotations

import asyncio
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import psutil
from redis.asyncio import Redis

from bench.common import median, print_table, write_result
from fleet.clients import redis_client
from fleet.processes import start_service
from fleet.servers import LocalServers, ServerSet, free_ports
from shared.bus import Bus, Outgoing, fetch
from shared.contracts import DropPolicy, FrameRef, Heartbeat, InferenceTask, ModelKind
from shared.keys import RedisKeys
from shared.metrics import Metrics
from shared.settings import VigilSettings
from shared.subjects import frames_stream, task_stream, task_stream_name, worker_durable

MODELS = ("m1", "m2")
FRAMES = 20000
BATCH = 64


def frames(prefix: str) -> list[FrameRef]:
    return [
        FrameRef(
            source_id="bench",
            seq=i,
            pts=i / 10,
            wall_time=time.time(),
            url="http://127.0.0.1:1/1,01",
            width=768,
            height=576,
            policy=DropPolicy.DROP_OLDEST,
        )
        for i in range(FRAMES)
    ]


async def prepare(servers: ServerSet) -> tuple[VigilSettings, Bus, Redis]:
    prefix = f"r{secrets.token_hex(3)}"
    settings = VigilSettings(_env_file=None, **servers.env(), subject_prefix=prefix)  # type: ignore[arg-type]
    bus = Bus(settings, "bench", "bench", Metrics("bench"))
    await bus.connect()
    await bus.ensure_stream(frames_stream(settings))
    redis = redis_client(servers.env())
    for model in MODELS:
        await bus.ensure_stream(task_stream(settings, model, f"{model}Inference", max_age=60, cap=100_000))
        hb = Heartbeat.idle(model, ModelKind.DETECTION, f"{model}Inference", "bench")
        await redis.set(RedisKeys(settings).heartbeat(model, "bench"), hb.to_bytes(), ex=600)
    return settings, bus, redis


async def drain_tasks(bus: Bus, settings: VigilSettings, model: str, stop: asyncio.Event) -> int:
    """A no-op worker: take tasks and ack them."""
    sub = await bus.durable_pull(task_stream_name(settings, model), worker_durable(model), max_ack_pending=10_000)
    done = 0
    while not stop.is_set():
        for msg in await fetch(sub, 256, timeout=0.2):
            await msg.ack()
            done += 1
    return done


async def bare_loop(servers: ServerSet) -> dict[str, float]:
    settings, bus, redis = await prepare(servers)
    refs = frames(settings.subject_prefix)
    cpu0, t0 = time.process_time(), time.perf_counter()
    for start in range(0, FRAMES, BATCH):
        now = time.time()
        await bus.publish_many(
            [
                Outgoing.of(bus.subjects.task(f"{model}Inference"), InferenceTask(frame=ref, model=model, routed_at=now))
                for ref in refs[start : start + BATCH]
                for model in MODELS
            ]
        )
    seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    await redis.aclose()
    await bus.close()
    return {"fps": FRAMES / seconds, "cpu_us_per_frame": 1e6 * cpu / FRAMES}


async def router_process(servers: ServerSet) -> dict[str, float]:
    settings, bus, redis = await prepare(servers)
    refs = frames(settings.subject_prefix)
    for start in range(0, FRAMES, BATCH):
        await bus.publish_many([Outgoing.of(bus.subjects.frames(ref.source_id), ref) for ref in refs[start : start + BATCH]])
    stop = asyncio.Event()
    drains = [asyncio.create_task(drain_tasks(bus, settings, model, stop)) for model in MODELS]
    port = free_ports(1)[0]
    env = servers.env() | {"subject_prefix": settings.subject_prefix, "metrics_port": str(port)}
    process = await start_service("services.router", env)
    ps = psutil.Process(process.pid)
    first: tuple[float, float, int] | None = None
    last: tuple[float, float, int] = (0.0, 0.0, 0)
    async with aiohttp.ClientSession() as http:
        deadline = time.monotonic() + 120
        while last[2] < FRAMES and time.monotonic() < deadline:
            try:
                async with http.get(f"http://127.0.0.1:{port}/healthz") as resp:
                    routed = (await resp.json())["frames_routed"]
            except (aiohttp.ClientError, KeyError):
                process.check_running()
                await asyncio.sleep(0.05)
                continue
            sample = (time.perf_counter(), sum(ps.cpu_times()[:2]), routed)
            if routed and first is None:
                first = sample
            last = sample
            await asyncio.sleep(0.02)
    await process.stop()
    stop.set()
    acked = sum(await asyncio.gather(*drains))
    await redis.aclose()
    await bus.close()
    if first is None or last[2] < FRAMES:
        raise RuntimeError(f"the router routed {last[2]} of {FRAMES} frames")
    frames_done = last[2] - first[2]
    return {
        "fps": frames_done / (last[0] - first[0]),
        "cpu_us_per_frame": 1e6 * (last[1] - first[1]) / frames_done,
        "tasks_acked": acked,
    }


async def main(repeats: int) -> None:
    with tempfile.TemporaryDirectory(prefix="vigil-bench-") as tmp:
        servers = LocalServers(Path(tmp))
        server_set = servers.start()
        try:
            bare, router = [], []
            for i in range(repeats):
                bare.append(await bare_loop(server_set))
                router.append(await router_process(server_set))
                print(
                    f"run {i + 1}/{repeats}: bare {bare[-1]['fps']:.0f} frames/s, router {router[-1]['fps']:.0f} frames/s",
                    flush=True,
                )
        finally:
            servers.stop()
    ratio = median([r["fps"] / b["fps"] for r, b in zip(router, bare, strict=True)])
    rows: list[list[Any]] = [
        [
            "bare loop (tasks published straight, pipelined)",
            median([b["fps"] for b in bare]),
            median([b["cpu_us_per_frame"] for b in bare]),
        ],
        [
            "router service (consume frames, rules, publish, count, ack)",
            median([r["fps"] for r in router]),
            median([r["cpu_us_per_frame"] for r in router]),
        ],
        ["ratio router / bare", ratio, ""],
    ]
    print_table(
        f"routing {FRAMES} frames to {len(MODELS)} models; medians of {repeats} alternating runs "
        "(goal: router >= 1500 frames/s, < 200 us CPU/frame)",
        ["pipeline", "frames/s", "CPU us/frame"],
        rows,
    )
    write_result(
        "router",
        {
            "frames": FRAMES,
            "models": len(MODELS),
            "repeats": repeats,
            "bare": bare,
            "router": router,
            "ratio": ratio,
            "goal": {"fps": 1500, "cpu_us_per_frame": 200},
        },
    )


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 3))
