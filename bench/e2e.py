"""The whole fleet end to end (real servers, one process per service, `run_fleet`) next to a bare sequential
loop over the same frames, in the same run (ONNX Runtime threads: `--threads` per worker, `--bare-threads` in the
bare loop; both default to ONNX Runtime's own choice).

Cases: the sample video as fast as possible with both models on every frame; the same with classification on
every 5th frame (router `routing_rules`); the reader paced at the file's 10 fps for --realtime-seconds (40)
from its first frame, both models on every frame, for latency; and the same with 4 sources at 10 fps each (the
sample video four times, one reader). Each case runs on fresh servers.

What is measured, per case:
- frames/s end to end: frames all of whose results came out on the results subject without error, over
  the time from the first frame read (FrameRef.wall_time) to the last of those results;
- latency from frame read to result: a frame's is that of its last model's result, timestamped when a core
  NATS subscription here receives it (so the registrator could record it no sooner);
- latency from result to event record (real-time cases): from the detection result that opens an event (its
  frame is the event's first) received here to the event's record in Redis, seen through a keyspace
  notification of its source's index;
- CPU per frame of each service and server: psutil CPU times from the first frame published to just before
  the fleet stops (start-up, model loading and shutdown excluded), over the frames completed;
- peak RSS of each process (sampled every 0.5 s), and the reader's dropped frames.
The fleet does more than the bare loop: the registrator makes the events' proof clips, and all of that is in
its CPU. The harness's own subscriptions (run_fleet's progress and the results here) cost nats-server a
little, which its share includes.
The bare loop: PyAV decode, JPEG encode at the reader's quality, JPEG decode, SSD, then EfficientNet-Lite0
(on every Nth frame when the case says so), one frame at a time, timed after the models' first run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
import numpy as np
from nats.aio.msg import Msg
from redis.asyncio import Redis

from bench.common import ROOT, median, print_table, write_result
from bench.fleet_probe import FleetProcesses, ProbedFleet, exit_logs, is_server, service_of
from fleet.clients import connect_nats, redis_client
from fleet.run import FleetOptions, run_fleet
from fleet.servers import LocalServers
from services.reader.settings import ReaderSettings
from services.worker.manifest import load_spec
from services.worker.onnx_model import load_model
from shared.contracts import Event, InferenceResult, SourceHealth
from shared.jpeg import decode_jpeg, encode_jpeg
from shared.keys import ROUTED_SHED, RedisKeys
from shared.settings import VigilSettings
from shared.subjects import Subjects

VIDEO = ROOT / "video" / "vtest.mp4"
SOURCE_ID = "e2e"
MULTI_SOURCES = 4
DETECTOR, CLASSIFIER = ROOT / "models" / "ssd_mobilenet_v2_coco", ROOT / "models" / "efficientnet_lite0"
JPEG_QUALITY = ReaderSettings.model_fields["jpeg_quality"].default
RSS_EVERY = 0.5
WARM_UP_SECONDS = 1.0
GOAL_RATIO, GOAL_BUS_SHARE, GOAL_P99_MS = 1.0, 0.10, 250.0


@dataclass(frozen=True)
class Case:
    name: str
    every_nth: int  # classification on one frame in N (by seq, as the router samples)
    realtime: bool = False
    sources: int = 1  # the sample video this many times, one reader, each source at the file's own rate

    @property
    def source_ids(self) -> list[str]:
        return [SOURCE_ID] if self.sources == 1 else [f"{SOURCE_ID}{i + 1}" for i in range(self.sources)]


FAST = [Case("both models, every frame", 1), Case("classification every 5th frame", 5)]
REALTIME = Case("real time (10 fps), both models", 1, realtime=True)
MULTI = Case(f"{MULTI_SOURCES} sources at 10 fps, both models", 1, realtime=True, sources=MULTI_SOURCES)
TIMED = [REALTIME, MULTI]


@dataclass(frozen=True)
class Plan:
    """How the cases run: ONNX Runtime threads per worker and in the bare loop (each at its own best; 0 lets ONNX
    Runtime choose), the real-time cases' length, extra settings for every service (an A/B of one knob), and
    which cases (all by default; a subset writes e2e_subset.json, so it never overwrites the full run's)."""

    threads: int
    bare_threads: int
    realtime_seconds: float
    echo: bool = False
    settings: tuple[tuple[str, str], ...] = ()
    only: tuple[str, ...] = ()  # parts of case names; empty: every case

    def wants(self, case: Case) -> bool:
        return not self.only or any(part in case.name for part in self.only)


@dataclass
class Probe:
    """What the harness sees of one fleet run, filled by NATS callbacks and the fleet's stop hook."""

    processes: FleetProcesses
    results: list[tuple[float, bytes]] = field(default_factory=list)  # (received, payload): parsed after the run
    health: dict[str, SourceHealth] = field(default_factory=dict)
    recorded: dict[str, float] = field(default_factory=dict)  # event id -> when its record was first seen in Redis
    cpu_first_frame: dict[str, float] = field(default_factory=dict)
    cpu_before_stop: dict[str, float] = field(default_factory=dict)
    first_frame: asyncio.Event = field(default_factory=asyncio.Event)
    peak_rss: dict[str, float] = field(default_factory=dict)

    def before_stop(self) -> None:
        self.cpu_before_stop = self.processes.cpu_seconds()

    async def on_frame(self, msg: Msg) -> None:
        if not self.first_frame.is_set():
            self.cpu_first_frame = self.processes.cpu_seconds()
            self.first_frame.set()

    async def on_status(self, msg: Msg) -> None:
        # A file's reader exits once its source has ended: its CPU is read now, before it goes.
        self.processes.cpu_seconds()

    async def on_result(self, msg: Msg) -> None:
        self.results.append((time.time(), msg.data))

    async def on_health(self, msg: Msg) -> None:
        health = SourceHealth.from_bytes(msg.data)
        self.health[health.source_id] = health

    async def watch_records(self, redis: Redis, keys: RedisKeys) -> None:
        """Note when each event's record first shows in its source's index, as Redis tells of each write to one."""
        await redis.config_set("notify-keyspace-events", "Kz")  # keyspace events of sorted sets: the indexes
        pubsub = redis.pubsub()
        prefix = f"{keys.events_by('source', '')}"
        await pubsub.psubscribe(f"__keyspace@*__:{prefix}*")
        try:
            async for message in pubsub.listen():
                if message["type"] != "pmessage":
                    continue
                at = time.time()
                key = _text(message["channel"]).split(":", 1)[1]
                # Events started in the last minute: a new one is among them (an update keeps its start).
                for event_id in await redis.zrangebyscore(key, at - 60, "+inf"):
                    self.recorded.setdefault(_text(event_id), at)
        finally:
            await pubsub.aclose()


def percentiles_ms(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50": float("nan"), "p95": float("nan"), "p99": float("nan")}
    p50, p95, p99 = np.percentile(np.array(values) * 1000, [50, 95, 99])
    return {"p50": float(p50), "p95": float(p95), "p99": float(p99)}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


Frame = tuple[str, int]  # (source_id, seq)


def frame_outcomes(results: list[tuple[float, bytes]], detector: str, classifier: str, every_nth: int) -> dict[str, Any]:
    """Frames whose every expected result arrived without error; their latencies and the span they took."""
    received: dict[Frame, dict[str, float]] = defaultdict(dict)
    read_at: dict[Frame, float] = {}
    # Where a result's latency went, per model: frame read -> the worker's result (reader, router, queue and
    # worker), then the worker's result -> received here (publish and delivery); and the worker's own stages.
    parts: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    errors = 0
    for at, data in results:
        result = InferenceResult.from_bytes(data)
        if result.error:
            errors += 1
            continue
        seq = result.frame.source_id, result.frame.seq
        read_at[seq] = result.frame.wall_time
        if result.model in received[seq]:
            continue  # a redelivered task's second result is no later news
        received[seq][result.model] = at
        part = parts[result.model]
        part["read_to_worker_result"].append(result.finished_at - result.frame.wall_time)
        part["worker_result_to_received"].append(at - result.finished_at)
        part["worker_download_decode"].append(result.timings.download_ms / 1000)
        part["worker_infer"].append(result.timings.infer_ms / 1000)
    done: dict[Frame, float] = {}
    for seq, models in received.items():
        wanted = {detector} | ({classifier} if seq[1] % every_nth == 0 else set())
        if wanted <= models.keys():
            done[seq] = max(models[m] for m in wanted)
    if not done:
        return {"frames": 0, "errors": errors, "seconds": 0.0, "fps": 0.0, "latency_ms": percentiles_ms([])}
    first_read = min(read_at.values())
    seconds = max(done.values()) - first_read
    latency = {seq: done[seq] - read_at[seq] for seq in done}
    worst = sorted(latency, key=latency.__getitem__, reverse=True)[:5]
    # The first frames pay for first uses: SeaweedFS grows the TTL's volumes at the first upload, and each
    # worker's first inference, 4-5 times a later one's, allocates (no worker warms its model up at start).
    warm = [lat for seq, lat in latency.items() if read_at[seq] >= first_read + WARM_UP_SECONDS]
    return {
        "frames": len(done),
        "errors": errors,
        "seconds": seconds,
        "fps": len(done) / seconds,
        "latency_ms": percentiles_ms(list(latency.values())),
        "latency_ms_after_first_second": percentiles_ms(warm),
        "latency_parts_ms": {m: {k: percentiles_ms(v) for k, v in p.items()} for m, p in sorted(parts.items())},
        # Which frames make the tail: the first ones (warm-up), or any (load)?
        "slowest_frames_ms": {f"{seq[0]}/{seq[1]}": round(latency[seq] * 1000) for seq in worst},
    }


def record_latency(
    results: list[tuple[float, bytes]], detector: str, events: list[Event], recorded: dict[str, float]
) -> dict[str, Any]:
    """From the detection result that opened each event (its frame is the event's first) received here, to the
    event's record first seen in Redis."""
    opened_by: dict[tuple[str, float], float] = {}
    for at, data in results:
        result = InferenceResult.from_bytes(data)
        if result.model == detector and result.error is None:
            opened_by.setdefault((result.frame.source_id, result.frame.wall_time), at)
    lags = [
        recorded[e.id] - opened_by[(e.source_id, e.start_wall)]
        for e in events
        if e.id in recorded and (e.source_id, e.start_wall) in opened_by
    ]
    return {"events": len(events), "measured": len(lags), "latency_ms": percentiles_ms(lags)}


async def shed_by_model(redis: Redis, keys: RedisKeys, source_ids: list[str]) -> dict[str, int]:
    """Live frames the router gave a model no task, its queue holding live_backlog_seconds of work: its totals."""
    shed: Counter[str] = Counter()
    for source_id in source_ids:
        for name, value in (await redis.hgetall(keys.totals(source_id))).items():
            if _text(name).startswith(ROUTED_SHED):
                shed[_text(name)[len(ROUTED_SHED) :]] += int(value)
    return dict(sorted(shed.items()))


def cpu_per_frame(probe: Probe, frames: int) -> dict[str, Any]:
    """CPU ms per frame by service (replicas summed) and server, and the bus+storage share of the total."""
    by: dict[str, float] = defaultdict(float)
    for name, end in probe.cpu_before_stop.items():
        by[service_of(name)] += end - probe.cpu_first_frame.get(name, 0.0)
    ms = {name: 1000 * seconds / max(frames, 1) for name, seconds in sorted(by.items())}
    servers = sum(v for k, v in ms.items() if is_server(k))
    total = sum(ms.values())
    return {
        "ms_per_frame": ms,
        "services_ms": total - servers,
        "servers_ms": servers,
        "total_ms": total,
        "bus_storage_share": servers / total if total else float("nan"),
    }


def source_settings(case: Case) -> dict[str, str]:
    if case.sources == 1:
        return {"video_source": str(VIDEO), "source_id": SOURCE_ID, "video_realtime": str(case.realtime).lower()}
    sources = [{"source_id": s, "url": str(VIDEO), "realtime": case.realtime} for s in case.source_ids]
    return {"sources": json.dumps(sources)}


async def fleet_case(case: Case, plan: Plan) -> dict[str, Any]:
    realtime_seconds, echo = plan.realtime_seconds, plan.echo
    detector, classifier = load_spec(DETECTOR).name, load_spec(CLASSIFIER).name
    settings = source_settings(case) | {"intra_op_threads": str(plan.threads)} | dict(plan.settings)
    load_before = os.getloadavg()[0]
    if case.every_nth > 1:
        settings["routing_rules"] = json.dumps({classifier: {"every_nth": case.every_nth}})
    fleet_settings = VigilSettings(_env_file=None, **settings)  # type: ignore[arg-type,call-arg]
    subjects = Subjects.from_settings(fleet_settings)
    with tempfile.TemporaryDirectory(prefix="vigil-e2e-") as tmp:
        data = Path(tmp)
        servers = LocalServers(data / "servers", log_dir=data / "logs")
        server_set = await asyncio.to_thread(servers.start)
        nc = await connect_nats(server_set.env())
        redis = redis_client(server_set.env())
        fleet = ProbedFleet(lambda: probe.before_stop(), echo=echo)
        probe = Probe(FleetProcesses(fleet, servers))
        sampler = asyncio.create_task(probe.processes.track(probe.peak_rss, RSS_EVERY))
        stop = asyncio.Event()
        timer: asyncio.Task[None] | None = None
        records = asyncio.create_task(probe.watch_records(redis, RedisKeys(fleet_settings))) if case.realtime else None
        try:
            await nc.subscribe(subjects.results_all, cb=probe.on_result)
            # Only the first frame: every delivery more would be the harness's cost in nats-server's CPU.
            await (await nc.subscribe(subjects.frames_all, cb=probe.on_frame)).unsubscribe(limit=1)
            await nc.subscribe(subjects.source_status_all, cb=probe.on_status)
            await nc.subscribe(subjects.source_health_all, cb=probe.on_health)
            if case.realtime:

                async def stop_later() -> None:
                    await probe.first_frame.wait()
                    await asyncio.sleep(realtime_seconds)
                    stop.set()

                timer = asyncio.create_task(stop_later())
            try:
                report = await run_fleet(servers, FleetOptions(data, settings=settings), stop, fleet)
            except RuntimeError as exc:  # a service died during start-up
                raise RuntimeError(f"{case.name}: {exc}\n{exit_logs(fleet)}") from exc
            shed = await shed_by_model(redis, RedisKeys(fleet_settings), case.source_ids)
        finally:
            if timer:
                timer.cancel()
            if records:
                records.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await records
            sampler.cancel()
            await redis.aclose()
            await nc.drain()
            await asyncio.to_thread(servers.stop)
    if report.code != 0 or (not case.realtime and not set(case.source_ids) <= report.drained.keys()):
        raise RuntimeError(
            f"{case.name}: the fleet run failed (code {report.code}, drained {list(report.drained)})\n{exit_logs(fleet)}"
        )
    outcome = frame_outcomes(probe.results, detector, classifier, case.every_nth)
    outcome["load_average_1m"] = [load_before, os.getloadavg()[0]]  # the machine's, before and after the case
    published = dropped = 0
    by_reason: Counter[str] = Counter()
    for source_id in case.source_ids:
        status, health = report.sources.get(source_id), probe.health.get(source_id)
        # The ENDED status (also sent by a reader stopped mid-file) has the totals; else the last health report.
        published += status.frames_published if status else (health.frames_published if health else 0)
        dropped += status.frames_dropped if status else (sum(health.frames_dropped.values()) if health else 0)
        by_reason.update(health.frames_dropped if health else {})
    drained = {s: report.drained[s].results for s in case.source_ids if s in report.drained}
    return outcome | {
        "sources": case.sources,
        "published": published,
        "dropped_by_reader": dropped,
        "dropped_by_reason": dict(by_reason),
        "shed_by_router": shed,
        "drained_results": drained or None,
        "result_to_record": record_latency(probe.results, detector, report.events, probe.recorded) if case.realtime else None,
        "cpu": cpu_per_frame(probe, outcome["frames"]),
        "peak_rss_mb": {k: round(v, 1) for k, v in sorted(probe.peak_rss.items())},
        "error_results": report.error_results,
    }


class Laps:
    """Seconds per stage of a sequential loop: each lap ends the stage that ran since the previous one."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self._t = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.seconds[stage] += now - self._t
        self._t = now


def video_frames() -> Any:
    container = av.open(str(VIDEO))
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"  # as the reader decodes
    try:
        yield from container.decode(stream)
    finally:
        container.close()


def bare_loop(every_nth: int, threads: int) -> dict[str, Any]:
    # Session options as the workers' (no spinning: WorkerSettings.ort_allow_spinning); threads: the plan's bare_threads.
    ssd = load_model(DETECTOR, intra_op_threads=threads, allow_spinning=False)
    eff = load_model(CLASSIFIER, intra_op_threads=threads, allow_spinning=False)
    warm = decode_jpeg(encode_jpeg(next(video_frames()).to_ndarray(format="bgr24"), JPEG_QUALITY))
    # The first run allocates; a worker's also happens before its first task.
    ssd.infer([warm])
    eff.infer([warm])
    frames = 0
    started, cpu0 = time.perf_counter(), time.process_time()
    laps = Laps()
    for seq, frame in enumerate(video_frames()):
        image = frame.to_ndarray(format="bgr24")
        laps.lap("decode")
        jpeg = encode_jpeg(image, JPEG_QUALITY)
        laps.lap("jpeg_encode")
        image = decode_jpeg(jpeg)
        laps.lap("jpeg_decode")
        ssd.infer([image])
        laps.lap("detection")
        if seq % every_nth == 0:
            eff.infer([image])
            laps.lap("classification")
        frames += 1
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu0
    return {
        "frames": frames,
        "seconds": seconds,
        "fps": frames / seconds,
        "cpu_ms_per_frame": 1000 * cpu / frames,
        "stage_ms_per_frame": {k: 1000 * v / frames for k, v in laps.seconds.items()},
    }


def med(runs: list[dict[str, Any]], *path: str) -> float:
    """Median over repeats of one number inside each run's dict."""
    values = []
    for run in runs:
        value: Any = run
        for key in path:
            value = value.get(key, float("nan")) if isinstance(value, dict) else float("nan")
        values.append(float(value))
    return median(values)


def goal(name: str, case: str, value: float, target: float, higher_is_better: bool) -> dict[str, Any]:
    met = value >= target if higher_is_better else value < target
    miss = 0.0 if met else abs(value - target)
    return {
        "goal": name,
        "case": case,
        "value": value,
        "target": f"{'>=' if higher_is_better else '<'} {target:g}",
        "met": met,
        "missed_by": miss,
        "missed_by_fraction_of_target": miss / target,
    }


Runs = dict[Case, dict[str, list[dict[str, Any]]]]  # case -> "fleet" / "bare" -> one dict per repeat


async def collect_once(runs: Runs, i: int, repeats: int, plan: Plan) -> None:
    """One run of every case, added to `runs`. Fleet and bare loop alternate so that machine noise hits both alike."""
    for case in filter(plan.wants, FAST):
        fleet = await fleet_case(case, plan)
        bare = await asyncio.to_thread(bare_loop, case.every_nth, plan.bare_threads)
        bare["load_average_1m"] = os.getloadavg()[0]
        fleet["ratio"] = fleet["fps"] / bare["fps"]
        runs[case]["fleet"].append(fleet)
        runs[case]["bare"].append(bare)
        print(
            f"run {i + 1}/{repeats}, {case.name}: fleet {fleet['fps']:.1f} frames/s, bare {bare['fps']:.1f} "
            f"frames/s, ratio {fleet['ratio']:.2f}, p99 {fleet['latency_ms']['p99']:.0f} ms",
            flush=True,
        )
    for case in filter(plan.wants, TIMED):
        rt = await fleet_case(case, plan)
        runs[case]["fleet"].append(rt)
        print(
            f"run {i + 1}/{repeats}, {case.name}: {rt['frames']} frames, p99 {rt['latency_ms']['p99']:.0f} ms, "
            f"result->record p99 {rt['result_to_record']['latency_ms']['p99']:.0f} ms, dropped {rt['dropped_by_reader']}",
            flush=True,
        )


def summary(case: Case, fleet: list[dict[str, Any]], bare: list[dict[str, Any]]) -> dict[str, Any]:
    shed_models = sorted({m for run in fleet for m in run.get("shed_by_router", {})})
    return {
        "frames": med(fleet, "frames"),
        "fleet_fps": med(fleet, "fps"),
        "bare_fps": med(bare, "fps") if bare else None,
        "ratio": med(fleet, "ratio") if bare else None,
        "latency_ms": {p: med(fleet, "latency_ms", p) for p in ("p50", "p95", "p99")},
        "result_to_record_ms": {p: med(fleet, "result_to_record", "latency_ms", p) for p in ("p50", "p95", "p99")}
        if case.realtime
        else None,
        "p99_ms_after_first_second": med(fleet, "latency_ms_after_first_second", "p99"),
        "cpu_ms_per_frame": med(fleet, "cpu", "total_ms"),
        "bus_storage_share": med(fleet, "cpu", "bus_storage_share"),
        "dropped": med(fleet, "dropped_by_reader"),
        "published": med(fleet, "published"),
        "shed": {m: median([run.get("shed_by_router", {}).get(m, 0) for run in fleet]) for m in shed_models},
    }


def case_goals(case: Case, s: dict[str, Any]) -> list[dict[str, Any]]:
    if case.realtime:
        return [
            goal("p99 ms, frame read -> result", case.name, s["latency_ms"]["p99"], GOAL_P99_MS, False),
            goal("nats+redis+weed share of CPU per frame", case.name, s["bus_storage_share"], GOAL_BUS_SHARE, False),
        ]
    return [
        goal("fleet/bare frames/s", case.name, s["ratio"], GOAL_RATIO, True),
        goal("nats+redis+weed share of CPU per frame", case.name, s["bus_storage_share"], GOAL_BUS_SHARE, False),
    ]


def shed_cell(s: dict[str, Any]) -> str:
    shed = {m: n for m, n in s["shed"].items() if n}
    if not shed:
        return "0"
    return ", ".join(f"{m.split('_')[0]} {n:.0f} ({100 * n / s['published']:.0f} %)" for m, n in shed.items())


def print_cases(summaries: dict[Case, dict[str, Any]], plan: Plan, repeats: int) -> None:
    rows = []
    for case, s in summaries.items():
        lat = s["latency_ms"]
        rows.append(
            [
                case.name,
                round(s["frames"]),
                s["fleet_fps"],
                s["bare_fps"] or "-",
                s["ratio"] or "-",
                round(lat["p50"]),
                round(lat["p95"]),
                round(lat["p99"]),
                round(s["p99_ms_after_first_second"]) if case.realtime else "-",
                "/".join(str(round(v)) for v in s["result_to_record_ms"].values()) if s["result_to_record_ms"] else "-",
                s["cpu_ms_per_frame"],
                f"{100 * s['bus_storage_share']:.1f} %",
                round(s["dropped"]),
                shed_cell(s),
            ]
        )
    print_table(
        f"fleet end to end on {VIDEO.name} (795 frames, 768x576, 10 fps) vs bare loop, ONNX Runtime intra-op threads "
        f"{plan.threads} per worker and {plan.bare_threads} in the bare loop (0: its choice)"
        f"{''.join(f', {k}={v}' for k, v in plan.settings)}; medians of {repeats} run(s)",
        [
            "case",
            "frames done",
            "fleet frames/s",
            "bare frames/s",
            "fleet/bare",
            "read->result p50 ms",
            "p95 ms",
            "p99 ms",
            "p99 after 1st s",
            "result->record p50/p95/p99 ms",
            "CPU ms/frame (all)",
            "nats+redis+weed share",
            "dropped",
            "shed (router)",
        ],
        rows,
    )
    print(
        "  read->result: from the reader reading the frame (FrameRef.wall_time) to its last model's result received\n"
        "  on the results subject (p99 after 1st s: without the frames read in the first second, which pay for\n"
        "  first uses: the TTL's first SeaweedFS volumes, each worker's first inference).\n"
        "  result->record: from the detection result that opens an event, received here, to the event's record in Redis.\n"
        "  frames/s: frames with every result, from the first frame read to the last result.\n"
        "  dropped: by the reader; shed: live frames the router gave a model no task (its queue held\n"
        "  live_backlog_seconds of work), per model, of the frames published.\n"
        "  CPU: every service and server, from the first frame published until the fleet stops (drained; real time: stopped)."
    )


def print_processes(runs: Runs) -> None:
    def peak(run: dict[str, Any], name: str) -> float:
        return max((v for k, v in run["peak_rss_mb"].items() if service_of(k) == name), default=float("nan"))

    names = sorted(
        {service_of(n) for c in runs.values() for r in c["fleet"] for n in r["peak_rss_mb"]}, key=lambda n: (is_server(n), n)
    )
    rows = [
        [
            name,
            *(
                x
                for got in runs.values()
                for x in (med(got["fleet"], "cpu", "ms_per_frame", name), median([peak(r, name) for r in got["fleet"]]))
            ),
        ]
        for name in names
    ]
    header = ["process", *(f"case {i} {what}" for i in range(1, len(runs) + 1) for what in ("CPU ms/frame", "peak RSS MB"))]
    print_table("per process (cases in the order above; replicas of a service summed, servers last)", header, rows)
    for case, got in runs.items():
        if got["bare"]:
            stages = {k: round(med(got["bare"], "stage_ms_per_frame", k), 1) for k in got["bare"][0]["stage_ms_per_frame"]}
            print(f"bare loop, {case.name}: ms per frame {stages}; CPU {med(got['bare'], 'cpu_ms_per_frame'):.1f} ms/frame")


def print_latency_parts(runs: Runs) -> None:
    for case, got in runs.items():
        models = got["fleet"][0].get("latency_parts_ms", {})
        text = "; ".join(
            f"{model}: "
            + ", ".join(
                f"{part.replace('_', ' ')} {med(got['fleet'], 'latency_parts_ms', model, part, 'p50'):.0f}"
                f"/{med(got['fleet'], 'latency_parts_ms', model, part, 'p99'):.0f}"
                for part in parts
            )
            for model, parts in models.items()
        )
        print(f"where the latency goes (p50/p99 ms), {case.name}: {text}")


async def main(repeats: int, plan: Plan) -> None:
    runs: Runs = {c: {"fleet": [], "bare": []} for c in [*FAST, *TIMED] if plan.wants(c)}
    if not runs:
        raise SystemExit(f"no case matches {list(plan.only)}: the cases are {[c.name for c in [*FAST, *TIMED]]}")
    for i in range(repeats):
        await collect_once(runs, i, repeats, plan)
        # Reported after every repeat: a long run stopped early still leaves its medians so far.
        report(runs, i + 1, plan)


def report(runs: Runs, repeats: int, plan: Plan) -> None:
    summaries = {case: summary(case, got["fleet"], got["bare"]) for case, got in runs.items()}
    goals = [g for case, s in summaries.items() for g in case_goals(case, s)]
    print_cases(summaries, plan, repeats)
    print_processes(runs)
    print_latency_parts(runs)
    print_table(
        "goals",
        ["goal", "case", "value", "target", "met", "missed by"],
        [
            [
                g["goal"],
                g["case"],
                g["value"],
                g["target"],
                "yes" if g["met"] else "NO",
                "-" if g["met"] else f"{g['missed_by']:.3g} ({100 * g['missed_by_fraction_of_target']:.0f} % of target)",
            ]
            for g in goals
        ],
    )
    cases = [
        {
            "case": c.name,
            "every_nth_classification": c.every_nth,
            "realtime": c.realtime,
            "median": summaries[c],
            "fleet": got["fleet"],
            "bare": got["bare"],
        }
        for c, got in runs.items()
    ]
    write_result(
        "e2e_subset" if plan.only else "e2e",
        {
            "video": VIDEO.name,
            "repeats": repeats,
            "intra_op_threads": plan.threads,
            "bare_intra_op_threads": plan.bare_threads,
            "settings": dict(plan.settings),
            "realtime_seconds": plan.realtime_seconds,
            "goals": goals,
            "cases": cases,
        },
    )


def cli() -> None:
    from services.worker.settings import WorkerSettings

    parser = argparse.ArgumentParser(prog="python -m bench.e2e", description=__doc__.splitlines()[0])
    parser.add_argument("repeats", nargs="?", type=int, default=1, help="runs of every case (medians are reported)")
    parser.add_argument(
        "--threads",
        type=int,
        default=WorkerSettings.model_fields["intra_op_threads"].default,
        help="ONNX Runtime intra-op threads per worker (default: the workers')",
    )
    parser.add_argument(
        "--bare-threads", type=int, default=0, help="ONNX Runtime intra-op threads in the bare loop (default 0: its choice)"
    )
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a setting for every service")
    parser.add_argument("--case", action="append", default=[], help="run only the cases whose names contain this")
    parser.add_argument("--realtime-seconds", type=float, default=40.0, help="length of the real-time case")
    parser.add_argument("--echo", action="store_true", help="show the services' log lines")
    args = parser.parse_args()
    pairs = [item.partition("=") for item in args.set]
    if bad := [item for item, (_, eq, _) in zip(args.set, pairs, strict=True) if not eq]:
        parser.error(f"--set takes KEY=VALUE, not {bad}")
    plan = Plan(
        args.threads, args.bare_threads, args.realtime_seconds, args.echo, tuple((k, v) for k, _, v in pairs), tuple(args.case)
    )
    asyncio.run(main(args.repeats, plan))


if __name__ == "__main__":
    cli()
