"""Reader memory over a long run: the sample video looped as fast as possible; RSS sampled, slope reported.

Frames are smaller (max_width 384) and expire sooner (ttl 2m) than by default so that a 10-minute run
at full speed stays within the disk SeaweedFS is given here; the reader's own work per frame is the same.
"""

from __future__ import annotations

import asyncio
import sys
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


async def main(duration: float) -> None:
    with tempfile.TemporaryDirectory(prefix="vigil-soak-") as tmp:
        servers = LocalServers(Path(tmp))
        server_set = servers.start()
        env = server_set.env() | {
            "video_source": str(ROOT / "video" / "vtest.mp4"),
            "video_loop": "true",
            "max_width": "384",
            "ttl_bucket": "2m",
            "source_id": "soak",
            "metrics_port": "0",
        }
        process = await start_service("services.reader", env)
        ps = psutil.Process(process.pid)
        samples: list[tuple[float, float]] = []
        started = time.monotonic()
        try:
            while (elapsed := time.monotonic() - started) < duration:
                await asyncio.sleep(SAMPLE_EVERY)
                process.check_running()  # ServiceExited, with its last lines
                samples.append((elapsed / 60, ps.memory_info().rss / 2**20))
                if len(samples) % 12 == 0:
                    print(f"{elapsed:6.0f} s  RSS {samples[-1][1]:.1f} MB", flush=True)
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
        ["reader CPU (s)", cpu],
    ]
    print_table(f"reader RSS over {duration:.0f} s, sample video looped as fast as possible", ["measure", "value"], rows)
    write_result("reader_soak", {"duration_s": duration, "samples_min_mb": samples, "summary": {r[0]: r[1] for r in rows}})


if __name__ == "__main__":
    asyncio.run(main(float(sys.argv[1]) if len(sys.argv) > 1 else 600.0))
