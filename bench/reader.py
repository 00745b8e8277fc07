"""Reader throughput next to a bare sequential loop over the same frames, in the same run.

Bare loop: one process, one frame at a time: PyAV decode, JPEG encode, upload to SeaweedFS (batched
assign), no NATS. Reader: `python -m services.reader` on the same file, as fast as possible, timed from
its STARTED to its ENDED status. Runs alternate so that machine noise hits both alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import av
import psutil

from bench.common import ROOT, median, print_table, write_result
from fleet.clients import connect_nats
from fleet.processes import start_service
from fleet.servers import LocalServers, ServerSet
from shared.contracts import SourceState, SourceStatus
from shared.jpeg import encode_jpeg
from shared.settings import VigilSettings
from shared.storage import SeaweedStorage
from shared.subjects import Subjects

VIDEO = ROOT / "video" / "vtest.mp4"


async def bare_loop(servers: ServerSet, video: Path) -> dict[str, float]:
    settings = VigilSettings(_env_file=None, **servers.env())  # type: ignore[arg-type]
    async with SeaweedStorage(settings) as storage:
        await storage.upload(b"warm", ttl="5m")  # the first assign for a TTL grows volumes: not ours to time
        frames = 0
        started = time.perf_counter()
        cpu0 = time.process_time()
        with av.open(str(video)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for frame in container.decode(stream):
                await storage.upload(encode_jpeg(frame.to_ndarray(format="bgr24"), 85), ttl="5m")
                frames += 1
        elapsed = time.perf_counter() - started
        cpu_ms = 1000 * (time.process_time() - cpu0) / frames
        return {"frames": frames, "seconds": elapsed, "fps": frames / elapsed, "cpu_ms_per_frame": cpu_ms}


async def reader_process(servers: ServerSet, video: Path) -> dict[str, float]:
    prefix = f"b{secrets.token_hex(3)}"
    env = servers.env() | {"subject_prefix": prefix, "video_source": str(video), "source_id": "bench"}
    subjects = Subjects.from_settings(VigilSettings(_env_file=None, subject_prefix=prefix))  # type: ignore[call-arg]
    nc = await connect_nats(servers.env())
    statuses: dict[SourceState, SourceStatus] = {}

    cpu_at: dict[SourceState, float] = {}

    async def on_status(msg: Any) -> None:
        status = SourceStatus.from_bytes(msg.data)
        statuses[status.state] = status
        with contextlib.suppress(psutil.Error):
            cpu_at[status.state] = sum(ps.cpu_times()[:2])

    process = await start_service("services.reader", env)
    ps = psutil.Process(process.pid)
    await nc.subscribe(subjects.source_status_all, cb=on_status)
    peak_rss = cpu = 0.0
    while process.running:
        try:
            peak_rss = max(peak_rss, ps.memory_info().rss)
            times = ps.cpu_times()
            cpu = times.user + times.system
        except psutil.Error:
            pass
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(process.wait(), 0.1)
    await nc.drain()
    if SourceState.ENDED not in statuses:
        raise RuntimeError(f"the reader did not end its source: {process.describe_exit()}")
    start, end = statuses[SourceState.STARTED], statuses[SourceState.ENDED]
    seconds = end.wall_time - start.wall_time
    return {
        "frames": end.frames_published,
        "dropped": end.frames_dropped,
        "seconds": seconds,
        "fps": end.frames_published / seconds,
        # Between STARTED and ENDED: the steady state, without the imports at start-up.
        "cpu_ms_per_frame": 1000
        * (cpu_at.get(SourceState.ENDED, cpu) - cpu_at.get(SourceState.STARTED, 0.0))
        / end.frames_published,
        "peak_rss_mb": peak_rss / 2**20,
    }


async def main(repeats: int) -> None:
    with tempfile.TemporaryDirectory(prefix="vigil-bench-") as tmp:
        servers = LocalServers(Path(tmp))
        server_set = servers.start()
        try:
            bare, reader = [], []
            weed = psutil.Process(servers.pid("weed"))

            async def with_storage_cpu(run: Any) -> dict[str, float]:
                before = sum(weed.cpu_times()[:2])
                result = await run
                result["storage_cpu_ms_per_frame"] = 1000 * (sum(weed.cpu_times()[:2]) - before) / result["frames"]
                return result

            for i in range(repeats):
                bare.append(await with_storage_cpu(bare_loop(server_set, VIDEO)))
                reader.append(await with_storage_cpu(reader_process(server_set, VIDEO)))
                b, r = bare[-1]["fps"], reader[-1]["fps"]
                print(f"run {i + 1}/{repeats}: bare {b:.1f} frames/s, reader {r:.1f} frames/s", flush=True)
        finally:
            servers.stop()
    bare_fps, reader_fps = median([r["fps"] for r in bare]), median([r["fps"] for r in reader])
    ratio = median([r["fps"] / b["fps"] for r, b in zip(reader, bare, strict=True)])
    print_table(
        f"reader on {VIDEO.name} (795 frames, 768x576), as fast as possible; medians of {repeats} alternating runs",
        ["pipeline", "frames/s", "CPU ms/frame", "weed CPU ms/frame", "peak RSS MB"],
        [
            [
                "bare loop (decode+JPEG+upload, sequential)",
                bare_fps,
                median([b["cpu_ms_per_frame"] for b in bare]),
                median([b["storage_cpu_ms_per_frame"] for b in bare]),
                "-",
            ],
            [
                "reader service (pipelined, + NATS)",
                reader_fps,
                median([r["cpu_ms_per_frame"] for r in reader]),
                median([r["storage_cpu_ms_per_frame"] for r in reader]),
                median([r["peak_rss_mb"] for r in reader]),
            ],
            ["ratio reader / bare (goal >= 1.3)", ratio, "", "", ""],
        ],
    )
    write_result(
        "reader",
        {
            "video": VIDEO.name,
            "repeats": repeats,
            "bare": bare,
            "reader": reader,
            "median_fps": {"bare": bare_fps, "reader": reader_fps},
            "ratio": ratio,
            "goal_ratio": 1.3,
        },
    )


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 3))
