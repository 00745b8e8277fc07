"""Soak: the whole fleet on the sample video looped at its own rate (10 fps, like a camera) for DURATION
seconds, with memory and disk sampled every SAMPLE_EVERY seconds; slopes reported, clear growth fails.

Frames expire fast here so that their TTL cycles within the run: `ttl_bucket` 1m (the registrator wants
at least max_event_duration + pre_roll + post_roll + 30 s, hence max_event_duration 20) and SeaweedFS volumes
of VOLUME_MB (a TTL volume is removed as a whole, once full and idle for its TTL: SeaweedFS counts whole
minutes, so 2 min for 1m; with the default 64 MB volumes the first would go after about 15 minutes).

Series: RSS of every service and server, Redis `used_memory`, and the SeaweedFS data folder split into the
frames' TTL volumes (which must cycle) and the rest (proof clips and key frames, kept with no TTL by design,
and the filer's metadata). Slopes are least squares over the whole run and over its second half.

The run fails (exit 1) when a service exits, or when a gated series (services' RSS, Redis used_memory, the
frames' disk) grows over the second half faster than its threshold (THRESHOLDS in MB/min, and by at least
MIN_GROWTH_MB over the half) both by least squares and by its floor (the lowest sample of the last quarter
against that of the third): RSS that jumps while a clip is made and falls back moves a short run's
least-squares slope, not its floor. Servers' RSS is reported only. The frames' disk is gated only when its TTL
volumes first cycled before the second half began (a 3-minute run reports it but cannot gate it: they first
cycle after about 2 minutes).

Results: bench/results/soak.json, or soak_short.json for runs under SHORT_RUN seconds (CI's 3 minutes), so a
short run never overwrites a long run's figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from bench.common import ROOT, print_table, write_result
from bench.fleet_probe import MB, FleetProcesses, exit_logs, folder_mb, is_server
from bench.reader_soak import slope_mb_per_min
from fleet.clients import redis_client
from fleet.run import Fleet, FleetOptions, run_fleet
from fleet.servers import LocalServers

VIDEO = ROOT / "video" / "vtest.mp4"
SOURCE_ID = "soak"
SAMPLE_EVERY = 5.0
VOLUME_MB = 4
SHORT_RUN = 900.0
SETTINGS = {
    "video_source": str(VIDEO),
    "source_id": SOURCE_ID,
    "video_loop": "true",
    "video_realtime": "true",
    "ttl_bucket": "1m",
    "max_event_duration": "20",
}
# Second-half slopes (MB/min) that fail the run. A Python service's RSS wanders by a few MB as its heaps and
# caches settle; a leak of 1 KB a frame at 10 fps is 0.6 MB/min, a frame's JPEG kept (~60 KB) 35 MB/min.
THRESHOLDS = {"rss": 2.0, "redis": 1.0, "frames_disk": 5.0}
# ...and the least growth over the second half that fails it: one late step of an allocator (ONNX Runtime's
# arena meeting its first full batch) is no leak, but in a short run it alone makes a steep slope. In a
# 30-minute run the slopes above decide; in CI's 3 minutes, 20 MB over 90 s (13 MB/min) does.
MIN_GROWTH_MB = {"rss": 20.0, "redis": 5.0, "frames_disk": 20.0}


@dataclass
class Series:
    name: str
    kind: str  # a key of THRESHOLDS, or "" for series only reported
    points: list[tuple[float, float]] = field(default_factory=list)  # (minutes since start, MB)

    def slopes(self) -> tuple[float, float]:
        return slope_mb_per_min(self.points), slope_mb_per_min(self.since(0.5))

    def since(self, fraction: float) -> list[tuple[float, float]]:
        end = self.points[-1][0]
        return [p for p in self.points if p[0] >= fraction * end]

    def floor_slope(self) -> float:
        """How fast the floor rises over the second half: the lowest sample of its second half minus that of its
        first, over the time between them. Spikes (a clip being made) move the least-squares slope, not this."""
        end = self.points[-1][0]
        third = [mb for t, mb in self.points if end / 2 <= t < 3 * end / 4]
        fourth = [mb for t, mb in self.points if t >= 3 * end / 4]
        return (min(fourth) - min(third)) / (end / 4) if third and fourth and end else 0.0


def ttl_volume_ids(volume_url: str) -> set[int]:
    """Ids of the volume server's volumes that have a TTL (the frames'; proofs are stored without one)."""
    with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(f"{volume_url}/status", timeout=5) as resp:
        doc = json.load(resp)
    return {v["Id"] for v in doc.get("Volumes") or [] if (v.get("Ttl") or {}).get("Count")}


def volume_files_mb(weed_dir: Path, ids: set[int]) -> float:
    """Disk use of the named volumes' files (<id>.dat, .idx, ...)."""
    total = 0
    for f in weed_dir.glob("*.*"):
        if f.stem.isdigit() and int(f.stem) in ids:
            with contextlib.suppress(OSError):  # expired while we look
                total += f.stat().st_blocks * 512
    return total / MB


async def sample(
    series: dict[str, Series],
    processes: FleetProcesses,
    redis: Redis,
    servers: LocalServers,
    weed_dir: Path,
    minutes: float,
    seen_ttl: set[int],
) -> bool:
    """One sample of every series; True once a TTL volume seen before has gone (the TTLs cycle)."""

    def add(name: str, kind: str, mb: float) -> None:
        series.setdefault(name, Series(name, kind)).points.append((minutes, mb))

    for name, rss in processes.rss_mb().items():
        # Servers' RSS is reported, not gated: Go heaps grow to their GC target, and the results stream is kept
        # for 24 h by design, so nats-server's index grows with it.
        add(f"RSS {name}", "" if is_server(name) else "rss", rss)
    add("Redis used_memory", "redis", (await redis.info("memory"))["used_memory"] / MB)
    ids = await asyncio.to_thread(ttl_volume_ids, servers.servers.volume_url)
    total = await asyncio.to_thread(folder_mb, weed_dir)
    frames = await asyncio.to_thread(volume_files_mb, weed_dir, ids)
    add("SeaweedFS disk, frames (TTL volumes)", "frames_disk", frames)
    add("SeaweedFS disk, the rest (proofs, filer)", "", total - frames)
    add("SeaweedFS disk, all", "", total)
    cycled = bool(seen_ttl - ids)
    seen_ttl |= ids
    return cycled


async def soak(duration: float, echo: bool) -> dict[str, Any]:
    series: dict[str, Series] = {}
    with tempfile.TemporaryDirectory(prefix="vigil-soak-") as tmp:
        data = Path(tmp)
        servers = LocalServers(data / "servers", log_dir=data / "logs", volume_size_limit_mb=VOLUME_MB)
        server_set = await asyncio.to_thread(servers.start)
        fleet = Fleet(echo=echo)
        processes = FleetProcesses(fleet, servers)
        redis = redis_client(server_set.env())
        stop = asyncio.Event()
        run = asyncio.create_task(run_fleet(servers, FleetOptions(data, settings=SETTINGS), stop, fleet))
        cycled_at: float | None = None
        seen_ttl: set[int] = set()
        try:
            while not any(p.name == "reader" for p in fleet.procs):  # the clock starts with the source
                if run.done():
                    break
                await asyncio.sleep(0.2)
            started = time.monotonic()
            while not run.done() and (elapsed := time.monotonic() - started) < duration:
                if await sample(series, processes, redis, servers, data / "servers" / "weed", elapsed / 60, seen_ttl):
                    cycled_at = elapsed if cycled_at is None else cycled_at
                await asyncio.sleep(max(0.0, SAMPLE_EVERY - (time.monotonic() - started - elapsed)))
            # run_fleet returns early only when a service died.
            exited = [p.name for p in fleet.procs if p.process.returncode is not None] or (["(fleet)"] if run.done() else [])
            logs = exit_logs(fleet)  # before the fleet is stopped, when every exit is an error
            stop.set()
            report = await run
        except RuntimeError as exc:  # a service died during start-up
            raise RuntimeError(f"{exc}\n{exit_logs(fleet)}") from exc
        finally:
            stop.set()
            with contextlib.suppress(Exception):
                await run  # its own clean-up stops the services, before the servers go
            await redis.aclose()
            await asyncio.to_thread(servers.stop)
    progress = fleet.progress
    return {
        "series": series,
        "cycled_at": cycled_at,
        "exited": exited,
        "exit_logs": logs,
        "code": report.code,
        "frames_published": progress.frames["published"],
        "results": dict(progress.results),
        "error_results": dict(progress.errors),
        "events": len(report.events),
    }


def verdicts(series: dict[str, Series], duration: float, cycled_at: float | None) -> list[dict[str, Any]]:
    out = []
    for s in series.values():
        whole, half = s.slopes()
        gated = bool(s.kind)
        note = ""
        if s.kind == "frames_disk" and (cycled_at is None or cycled_at > duration / 2):
            gated = False
            note = "TTLs had not cycled by the second half" if cycled_at is None else f"TTLs first cycled at {cycled_at:.0f} s"
        half_minutes = s.points[-1][0] / 2
        limit = max(THRESHOLDS[s.kind], MIN_GROWTH_MB[s.kind] / half_minutes) if s.kind and half_minutes else None
        floor = s.floor_slope()
        grew = gated and limit is not None and half > limit and floor > limit
        out.append(
            {
                "series": s.name,
                "start_mb": s.points[0][1],
                "end_mb": s.points[-1][1],
                "max_mb": max(mb for _, mb in s.points),
                "slope_whole_mb_per_min": whole,
                "slope_second_half_mb_per_min": half,
                "floor_slope_second_half_mb_per_min": floor,
                "threshold_mb_per_min": limit if gated else None,
                "grew": grew,
                "note": note,
            }
        )
    return out


async def main(duration: float, echo: bool) -> int:
    got = await soak(duration, echo)
    series: dict[str, Series] = got["series"]
    rows = verdicts(series, duration, got["cycled_at"])
    order = sorted(rows, key=lambda r: (r["series"].startswith("RSS") and is_server(r["series"][4:]), r["series"]))
    print_table(
        f"fleet soak, {VIDEO.name} looped at 10 fps for {duration:.0f} s, sampled every {SAMPLE_EVERY:.0f} s "
        f"(ttl_bucket 1m, {VOLUME_MB} MB volumes); slopes by least squares",
        [
            "series",
            "start MB",
            "end MB",
            "max MB",
            "slope whole MB/min",
            "slope 2nd half MB/min",
            "floor slope 2nd half",
            "fails above (both)",
            "verdict",
        ],
        [
            [
                r["series"],
                r["start_mb"],
                r["end_mb"],
                r["max_mb"],
                r["slope_whole_mb_per_min"],
                r["slope_second_half_mb_per_min"],
                r["floor_slope_second_half_mb_per_min"],
                "-" if r["threshold_mb_per_min"] is None else r["threshold_mb_per_min"],
                "GROWS" if r["grew"] else (r["note"] or ("flat" if r["threshold_mb_per_min"] is not None else "reported")),
            ]
            for r in order
        ],
    )
    cycled = got["cycled_at"]
    print(
        f"frames published {got['frames_published']}, results {got['results']}, error results "
        f"{got['error_results'] or 0}, events {got['events']}; frames' TTL volumes first cycled at "
        f"{'-' if cycled is None else f'{cycled:.0f} s'}"
    )
    failures = [r["series"] for r in rows if r["grew"]]
    if got["exited"]:
        failures.append(f"services exited during the run: {', '.join(got['exited'])}")
        print(got["exit_logs"], file=sys.stderr)
    name = "soak" if duration >= SHORT_RUN else "soak_short"
    write_result(
        name,
        {
            "video": VIDEO.name,
            "duration_s": duration,
            "sample_every_s": SAMPLE_EVERY,
            "volume_size_mb": VOLUME_MB,
            "settings": {k: v for k, v in SETTINGS.items() if k != "video_source"},
            "thresholds_mb_per_min": THRESHOLDS,
            "min_growth_mb": MIN_GROWTH_MB,
            "ttl_first_cycled_s": cycled,
            "frames_published": got["frames_published"],
            "results": got["results"],
            "error_results": got["error_results"],
            "events": got["events"],
            "failures": failures,
            "slopes": rows,
            "samples": {s.name: s.points for s in series.values()},
        },
    )
    if failures:
        print(f"FAILED: {'; '.join(failures)}", file=sys.stderr)
        return 1
    return 0


def cli() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.splitlines()[0])
    parser.add_argument("duration", nargs="?", type=float, default=1800.0, help="seconds of streaming (default 1800)")
    parser.add_argument("--echo", action="store_true", help="show the services' log lines")
    args = parser.parse_args()
    sys.exit(asyncio.run(main(args.duration, args.echo)))


if __name__ == "__main__":
    cli()
