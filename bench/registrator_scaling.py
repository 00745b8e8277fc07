"""Registrator scale-out (issue 17): how many 10-fps cameras one registrator replica keeps up with, and two.

Each step feeds N synthetic sources at 10 fps each for TRIAL_S seconds: a frame reference (720p JPEGs, POOL per
source, stored once and reused) and a detection result per frame, a person in view 3 s of every 6 s, so events open
and close all the time and every one gets its proof clip cut. The sources' 6-s cycles are spread evenly, as cameras'
are: in step, every event would close at the same tick, and a burst of N clips would be cut at once every 6 s.

Every half second after WARMUP_S it samples, per source, the age of the oldest result not yet absorbed (JetStream's
view of the source's consumer: a result is acked only once its Redis transaction is written), and takes the worst
source; and how long the longest-owed proof has waited since its event closed (a DONE record whose clip is not yet
stored). A step holds when the p99 of the first is under P99_LIMIT_S, that of the second under PROOF_LIMIT_S, and
the feeder kept its schedule. The ladder goes up until a step fails; the result is the largest N that held, for 1
and 2 replicas, measured in one run, and their ratio (goal >= 1.8).

The replicas are processes of `python -m services.registrator` on the local servers; the machine's cores are
shared by them, the feeder and the servers, so the ratio on a 2-core machine says more about the machine than
about the design: the table gives the load next to it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, cast

import cv2
import psutil
from redis.asyncio import Redis

from bench.common import ROOT, print_table, write_result
from bench.cpu_quota import CpuQuota, CpuQuotaError
from bench.registrator import consumer_exists
from fleet.clients import redis_client
from fleet.processes import ServiceProcess, start_service
from fleet.servers import LocalServers, ServerSet
from shared.bus import Bus, Outgoing
from shared.contracts import BBox, Detection, Event, EventState, FrameRef, InferenceResult, ModelKind
from shared.jpeg import encode_jpeg
from shared.keys import RedisKeys
from shared.metrics import Metrics
from shared.settings import VigilSettings
from shared.storage import SeaweedStorage
from shared.subjects import frames_stream, registrator_results_durable, results_stream_name

FPS = 10
TRIAL_S, WARMUP_S = 60.0, 10.0
CYCLE = 6 * FPS  # ticks of a source's cycle: a person in view for the first half
P99_LIMIT_S = 1.0
# An event's proofs (its clip's last segments, the key frames, the uploads) are owed from its close: a replica that
# absorbs results on time but cuts proofs ever later does not hold its sources either.
# The limit allows the wait for the clip's last segment (up to a segment after the post-roll) and one clip cut at
# a replica's quota; a backlog that grows 10 % faster than it is cleared passes it within the sampled span.
PROOF_LIMIT_S = 10.0
OWED_READ = 50  # the oldest owed events read per sample
LADDER = [1, 2, 3, 4, 5, 6, 8, 10, 12, 16]
POOL = 20  # distinct 720p frames, reused; each source has its own copies (see frame_pools)
WIDTH, HEIGHT = 1280, 720


async def frame_pools(settings: VigilSettings, sources: int) -> list[list[str]]:
    """POOL frames for each source, each stored under its own URL. Sources sharing URLs at the same ticks would share
    their proofs' segments (the segment cache keys them by frame URL and tick): one replica would encode them once for
    all its sources, two replicas once each, and the benchmark would measure that cache, not the replicas."""
    cap = cv2.VideoCapture(str(ROOT / "video" / "vtest.mp4"))
    jpegs = [encode_jpeg(cv2.resize(cap.read()[1], (WIDTH, HEIGHT))) for _ in range(POOL)]
    cap.release()
    async with SeaweedStorage(settings) as storage:
        return [[await storage.upload(jpeg, ttl="30m") for jpeg in jpegs] for _ in range(sources)]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))] if ordered else 0.0


async def oldest_owed_proof(redis: Redis, keys: RedisKeys) -> tuple[float, int]:
    """How long the longest-waiting DONE event (closed, proofs not yet stored) has waited since its close, and how
    many are owed. The state index is ordered by start, so the longest waiting are among its first entries."""
    owed = keys.events_by("state", EventState.DONE.value)
    ids = cast(list[bytes], await redis.zrange(owed, 0, OWED_READ - 1))
    raws = cast(list[bytes | None], await redis.hmget(keys.event_index, ids)) if ids else []
    now = time.time()
    ages = [now - Event.model_validate_json(raw).updated_at for raw in raws if raw is not None]
    return max(ages, default=0.0), int(await redis.zcard(owed))


async def feed(bus: Bus, sources: list[str], pools: list[list[str]], stop: asyncio.Event, late: list[float]) -> None:
    """Every source's frame and result for each tick, paced at FPS; `late` gets how far behind schedule each tick was."""
    det = Detection.on_image("person", 0, 0.9, BBox(x1=0.3, y1=0.2, x2=0.5, y2=0.9), WIDTH, HEIGHT)
    started, tick = time.monotonic(), 0
    while not stop.is_set():
        now = time.time()
        items = []
        for i, (source_id, urls) in enumerate(zip(sources, pools, strict=False)):
            ref = FrameRef(
                source_id=source_id, seq=tick, pts=tick / FPS, wall_time=now, url=urls[tick % POOL], width=WIDTH, height=HEIGHT
            )
            person = (tick + i * CYCLE // len(sources)) % CYCLE < CYCLE // 2
            result = InferenceResult(
                frame=ref,
                model="ssd",
                kind=ModelKind.DETECTION,
                instance="bench",
                detections=[det] if person else [],
                finished_at=now,
            )
            items += [Outgoing.of(bus.subjects.frames(source_id), ref), Outgoing.of(bus.subjects.results(source_id), result)]
        await bus.publish_many(items)
        tick += 1
        behind = time.monotonic() - (started + tick / FPS)
        late.append(max(0.0, behind))
        if behind < 0:
            await asyncio.sleep(-behind)


async def trial(servers: ServerSet, pools: list[list[str]], replicas: int, n: int, replica_cpu: float | None) -> dict[str, Any]:
    prefix = f"s{secrets.token_hex(3)}"
    settings = VigilSettings(_env_file=None, **servers.env(), subject_prefix=prefix)  # type: ignore[arg-type]
    bus = Bus(settings, "bench", "bench", Metrics("bench"))
    await bus.connect()
    redis, keys = redis_client(settings), RedisKeys(settings)
    await bus.ensure_stream(frames_stream(settings))
    env = servers.env() | {
        "subject_prefix": prefix,
        "ttl_bucket": "30m",
        "max_event_duration": "20",
        "event_retention_days": "0",
        "event_storage_max_gb": "0",
        "TMP_PATH": str(Path(tempfile.gettempdir()) / f"vigil-bench-{prefix}"),
    }
    procs: list[ServiceProcess] = []
    quotas: list[CpuQuota] = []
    sources = [f"cam{i}" for i in range(n)]
    stop, late, worst, proof_waits, owed = asyncio.Event(), [], [], [], []
    stream = results_stream_name(settings)
    feeder: asyncio.Task[None] | None = None
    try:
        for i in range(replicas):
            procs.append(await start_service("services.registrator", env | {"instance": f"reg-{i + 1}"}, name=f"reg-{i + 1}"))
            if replica_cpu is not None:
                quotas.append(CpuQuota(f"vigil-bench-{prefix}-{i + 1}", replica_cpu))
                quotas[-1].add(procs[-1].pid)
        while not await stream_exists(bus, stream):
            for proc in procs:
                proc.check_running()
            await asyncio.sleep(0.1)
        feeder = asyncio.create_task(feed(bus, sources, pools, stop, late))
        started = time.monotonic()
        # CPU from the start of feeding: the replicas' own (x264's threads included), and the machine's busy share.
        watched = [psutil.Process(proc.pid) for proc in procs]
        cpu_before = [sum(w.cpu_times()[:2]) for w in watched]
        psutil.cpu_percent(None)
        while (elapsed := time.monotonic() - started) < TRIAL_S:
            await asyncio.sleep(0.5)
            if elapsed < WARMUP_S:
                continue
            ages = []
            for source_id in sources:
                durable = registrator_results_durable(source_id)
                if not await consumer_exists(bus, stream, durable):
                    ages.append(elapsed)  # not even taken yet: everything it was sent waits
                    continue
                ages.append((await bus.lag(stream, durable)).oldest_age)
            worst.append(max(ages))
            waited, count = await oldest_owed_proof(redis, keys)
            proof_waits.append(waited)
            owed.append(count)
        for proc in procs:
            proc.check_running()
        spent = time.monotonic() - started
        replica_cores = [(sum(w.cpu_times()[:2]) - before) / spent for w, before in zip(watched, cpu_before, strict=True)]
        machine_busy = psutil.cpu_percent(None)
    finally:
        stop.set()
        if feeder is not None:
            with contextlib.suppress(Exception):
                await feeder
        for proc in procs:
            await proc.stop(10)
        for quota in quotas:
            quota.close()
        await bus.close()
        finished = await redis.zcard(keys.events_by("state", EventState.FINISHED.value))
        await redis.aclose()
    p99, feeder_late, proof_p99 = percentile(worst, 99), percentile(late, 99), percentile(proof_waits, 99)
    held = p99 < P99_LIMIT_S and feeder_late < P99_LIMIT_S and proof_p99 < PROOF_LIMIT_S
    load = os.getloadavg()[0]
    print(
        f"  {replicas} replica(s), {n:2d} sources: oldest unabsorbed result p50 {percentile(worst, 50):.2f} s, "
        f"p99 {p99:.2f} s; oldest owed proof p99 {proof_p99:.1f} s (owed at most {max(owed, default=0)}); "
        f"{finished} events finished; feeder behind p99 {feeder_late:.2f} s; "
        f"registrator cores {sum(replica_cores):.2f}, machine busy "
        f"{machine_busy:.0f} %; load {load:.1f} -> {'held' if held else 'FAILED'}",
        flush=True,
    )
    return {
        "replicas": replicas,
        "sources": n,
        "p50_s": percentile(worst, 50),
        "p99_s": p99,
        "max_s": max(worst, default=0.0),
        "proof_wait_p50_s": percentile(proof_waits, 50),
        "proof_wait_p99_s": proof_p99,
        "owed_max": max(owed, default=0),
        "events_finished": finished,
        "feeder_behind_p99_s": feeder_late,
        "load_1min": load,
        "registrator_cores": replica_cores,  # CPU seconds per second, per replica
        "machine_busy_pct": machine_busy,
        "held": held,
    }


async def stream_exists(bus: Bus, stream: str) -> bool:
    try:
        await bus.js.stream_info(stream)
    except Exception:  # noqa: BLE001 - the registrator declares it when it starts
        return False
    return True


async def main(ladder: list[int], replica_cpu: float | None) -> int:
    steps: list[dict[str, Any]] = []
    best: dict[int, int] = {}
    with tempfile.TemporaryDirectory(prefix="vigil-bench-") as tmp:
        servers = LocalServers(Path(tmp) / "servers")
        server_set = await asyncio.to_thread(servers.start)
        try:
            settings = VigilSettings(_env_file=None, **server_set.env())  # type: ignore[arg-type]
            pools = await frame_pools(settings, max(ladder))
            for replicas in (1, 2):
                best[replicas] = 0
                for n in ladder:
                    step = await trial(server_set, pools, replicas, n, replica_cpu)
                    steps.append(step)
                    if not step["held"]:
                        break
                    best[replicas] = n
        finally:
            await asyncio.to_thread(servers.stop)
    ratio = best[2] / best[1] if best[1] else 0.0
    print_table(
        f"registrator scale-out: {FPS}-fps 720p sources, person 3 s in 6; a step holds when the p99 of the oldest "
        f"unabsorbed result is under {P99_LIMIT_S:g} s and that of the longest-owed proof under {PROOF_LIMIT_S:g} s "
        f"({TRIAL_S:.0f} s per step, first {WARMUP_S:.0f} s not sampled)"
        + ("" if replica_cpu is None else f"; each replica held to {replica_cpu:g} core(s)"),
        [
            "replicas",
            "sources",
            "p50 s",
            "p99 s",
            "max s",
            "owed proof p99 s",
            "owed at most",
            "events finished",
            "feeder behind p99 s",
            "registrator cores (each)",
            "machine busy %",
            "load 1 min",
            "held",
        ],
        [
            [
                s["replicas"],
                s["sources"],
                s["p50_s"],
                s["p99_s"],
                s["max_s"],
                s["proof_wait_p99_s"],
                s["owed_max"],
                s["events_finished"],
                s["feeder_behind_p99_s"],
                " + ".join(f"{c:.2f}" for c in s["registrator_cores"]),
                s["machine_busy_pct"],
                s["load_1min"],
                s["held"],
            ]
            for s in steps
        ],
    )
    print(f"most sources held: 1 replica {best[1]}, 2 replicas {best[2]}; ratio {ratio:.2f} (goal >= 1.8)")
    write_result(
        "registrator_scaling" if replica_cpu is None else "registrator_scaling_quota",
        {
            "fps": FPS,
            "trial_s": TRIAL_S,
            "p99_limit_s": P99_LIMIT_S,
            "proof_limit_s": PROOF_LIMIT_S,
            "replica_cpu_cores": replica_cpu,
            "steps": steps,
            "most_sources": best,
            "ratio": ratio,
        },
    )
    return 0


def cli() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.registrator_scaling", description=__doc__.splitlines()[0])
    parser.add_argument("--ladder", default=",".join(map(str, LADDER)), help="source counts to try, in order")
    parser.add_argument(
        "--replica-cpu",
        type=float,
        help="hold each replica to this many cores (a cgroup CPU quota; root only): on a machine too small to give "
        "a second replica a core of its own, the same budget per replica measures the design, not the machine",
    )
    args = parser.parse_args()
    try:
        sys.exit(asyncio.run(main([int(n) for n in args.ladder.split(",")], args.replica_cpu)))
    except CpuQuotaError as exc:
        parser.error(str(exc))


if __name__ == "__main__":
    cli()
