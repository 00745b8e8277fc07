"""Reader memory over a long run: RSS and threads sampled, slope reported.

One source: the sample video looped as fast as possible. Frames are smaller (max_width 384) and expire sooner
(ttl 2m) than by default so that a 10-minute run at full speed stays within the disk SeaweedFS is given here; the
reader's own work per frame is the same. `--sources N`: N copies looped at the video's own 10 fps, like cameras,
each taking 2 frames a second (as `bench.soak --sources` does): one reader holding many decoders at once.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

import psutil

from bench.common import ROOT, print_table, write_result
from fleet.processes import start_service
from fleet.servers import LocalServers

SAMPLE_EVERY = 5.0


def slope_mb_per_min(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of RSS (MB) against time (minutes)."""
    n = len(points)
    if n < 2:
        return 0.0
    mt = sum(t for t, _ in points) / n
    mr = sum(r for _, r in points) / n
    den = sum((t - mt) ** 2 for t, _ in points)
    return sum((t - mt) * (r - mr) for t, r in points) / den if den else 0.0


def source_settings(sources: int) -> dict[str, str]:
    video = str(ROOT / "video" / "vtest.mp4")
    if sources == 1:
        return {"video_source": video, "video_loop": "true", "source_id": "soak"}
    cameras = [{"source_id": f"soak{i}", "url": video, "loop": True, "realtime": True, "target_fps": 2.0} for i in range(sources)]
    return {"sources": json.dumps(cameras)}


async def main(duration: float, sources: int) -> None:
    with tempfile.TemporaryDirectory(prefix="vigil-soak-") as tmp:
        servers = LocalServers(Path(tmp))
        server_set = servers.start()
        env = (
            server_set.env()
            | source_settings(sources)
            | {
                "max_width": "384",
                "ttl_bucket": "2m",
                "metrics_port": "0",
            }
        )
        process = await start_service("services.reader", env)
        ps = psutil.Process(process.pid)
        samples: list[tuple[float, float]] = []
        threads: list[int] = []
        started = time.monotonic()
        try:
            while (elapsed := time.monotonic() - started) < duration:
                await asyncio.sleep(SAMPLE_EVERY)
                process.check_running()  # ServiceExited, with its last lines
                samples.append((elapsed / 60, ps.memory_info().rss / 2**20))
                threads.append(ps.num_threads())
                if len(samples) % 12 == 0:
                    print(f"{elapsed:6.0f} s  RSS {samples[-1][1]:.1f} MB, {threads[-1]} threads", flush=True)
            cpu = sum(ps.cpu_times()[:2])
        finally:
            await process.stop()
            servers.stop()
    half = samples[len(samples) // 2 :]
    rows = [
        ["RSS after 1 min (MB)", next(r for t, r in samples if t >= 1.0) if samples[-1][0] >= 1 else samples[0][1]],
        ["RSS at the end (MB)", samples[-1][1]],
        ["RSS max (MB)", max(r for _, r in samples)],
        ["slope, whole run (MB/min)", slope_mb_per_min(samples)],
        ["slope, second half (MB/min)", slope_mb_per_min(half)],
        ["threads, first and last", f"{threads[0]}, {threads[-1]}"],
        ["threads, max", max(threads)],
        ["reader CPU (s)", cpu],
    ]
    how = "sample video looped as fast as possible" if sources == 1 else f"{sources} camera-paced sources at 2 fps each"
    print_table(f"reader RSS over {duration:.0f} s, {how}", ["measure", "value"], rows)
    name = "reader_soak" if sources == 1 else f"reader_soak_{sources}_sources"
    doc = {"duration_s": duration, "sources": sources, "samples_min_mb": samples, "threads": threads}
    write_result(name, doc | {"summary": {r[0]: r[1] for r in rows}})


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("duration", type=float, nargs="?", default=600.0, help="seconds (default 600)")
    parser.add_argument("--sources", type=int, default=1, help="looped copies of the sample video (default 1)")
    args = parser.parse_args()
    asyncio.run(main(args.duration, args.sources))


if __name__ == "__main__":
    cli()
