"""Reader sources against the real servers: files, several sources, loops, rates, HTTP and HLS."""

import asyncio
import time
from itertools import pairwise
from pathlib import Path

import nats
import pytest
from aiohttp import web
from redis.asyncio import Redis

from fleet.clients import connect_nats
from fleet.servers import free_ports
from services.reader.service import ReaderService
from services.reader.settings import ReaderSettings
from shared.contracts import SourceHealth, SourceState
from shared.keys import RedisKeys
from tests.integration.test_reader import read_stream
from tests.support.media import hls_from, truncated_copy, two_stream_video
from tests.support.settings import settings_from


def reader_for(env: dict[str, str], **settings: object) -> ReaderService:
    values = env | {k: (v if isinstance(v, list) else str(v)) for k, v in settings.items()}
    return ReaderService(settings_from(ReaderSettings, values))


def by_source(frames: list) -> dict[str, list]:  # type: ignore[type-arg]
    out: dict[str, list] = {}  # type: ignore[type-arg]
    for frame in frames:
        out.setdefault(frame.source_id, []).append(frame)
    return out


async def test_one_reader_serves_several_sources_and_a_broken_one_hurts_no_other(
    redis: Redis, service_env: dict[str, str], repo_root: Path, tmp_path: Path
) -> None:
    sample = repo_root / "video" / "vtest.mp4"
    cut = truncated_copy(sample, tmp_path / "cut.mp4", 0.3)
    sources = [
        {"source_id": "good", "url": str(sample), "skip_frames": 9},
        {"source_id": "cut", "url": str(cut)},
        {"source_id": "missing", "url": str(tmp_path / "nothing.mp4")},
        {"source_id": "cv", "url": str(sample), "reader_type": "opencv", "target_fps": 1},
    ]
    reader = reader_for(service_env, sources=sources)
    watcher = await connect_nats(service_env)
    health_sub = await watcher.subscribe(reader.bus.subjects.source_health_all)
    await asyncio.wait_for(reader.execute(), 120)
    assert reader.exit_code == 0  # two file sources failed: said on the bus; a restart would only replay the files

    frames, statuses = await read_stream(reader)
    got = by_source(frames)
    assert len(got["good"]) == 80  # 795 frames, every 10th
    assert len(got["cv"]) == 80  # 79.5 s at 1 frame/s
    assert 50 < len(got["cut"]) < 795  # what decodes is published...
    final = {s.source_id: s for s in statuses if s.state is not SourceState.STARTED}
    assert final["good"].state is SourceState.ENDED and final["cv"].state is SourceState.ENDED
    assert final["cut"].state is SourceState.FAILED and "truncated" in (final["cut"].error or "")  # ...then a clear error
    assert final["cut"].frames_published == len(got["cut"])
    assert final["missing"].state is SourceState.FAILED and "not found" in (final["missing"].error or "")

    raw = await redis.get(RedisKeys(reader.settings).source_health("good"))
    health = SourceHealth.from_bytes(raw)
    assert health.state is SourceState.ENDED and health.frames_published == 80
    seen = set()
    while True:
        try:
            msg = await health_sub.next_msg(timeout=0.5)
        except nats.errors.TimeoutError:
            break
        seen.add((SourceHealth.from_bytes(msg.data).source_id, SourceHealth.from_bytes(msg.data).state))
    await watcher.close()
    assert ("good", SourceState.STREAMING) in seen and ("cut", SourceState.FAILED) in seen


async def test_a_looped_file_keeps_counting_stream_time(service_env: dict[str, str], repo_root: Path) -> None:
    reader = reader_for(
        service_env, video_source=repo_root / "video" / "vtest.mp4", video_loop="true", video_skip_frames=19, max_width=160
    )
    task = asyncio.create_task(reader.execute())
    while not reader.runners or reader.runners[0].frames_published < 100:  # 40 per pass: two loops and more
        await asyncio.sleep(0.1)
        assert not task.done(), task
    reader.stop_event.set()
    await asyncio.wait_for(task, 30)
    frames, statuses = await read_stream(reader)
    assert [f.seq for f in frames] == list(range(len(frames)))
    pts = [f.pts for f in frames]
    assert all(b > a for a, b in pairwise(pts))  # no jump back at the loop
    assert pts[40] == pytest.approx(80.0, abs=0.05)  # the second pass starts where the first ended (79.5 s + 1 frame)
    assert statuses[-1].state is SourceState.ENDED  # stopped by request


async def test_stream_index_picks_the_stream(service_env: dict[str, str], tmp_path: Path) -> None:
    video = tmp_path / "two.mp4"
    two_stream_video(video, frames=10)
    for index, size in ((0, (64, 48)), (1, (32, 24))):
        reader = reader_for(
            service_env | {"subject_prefix": f"{service_env['subject_prefix']}s{index}"}, video_source=video, stream_index=index
        )
        await reader.execute()
        frames, _ = await read_stream(reader)
        assert len(frames) == 10 and {(f.width, f.height) for f in frames} == {size}


async def test_realtime_pacing_follows_the_file_rate(service_env: dict[str, str], repo_root: Path) -> None:
    reader = reader_for(service_env, video_source=repo_root / "video" / "vtest.mp4", video_realtime="true")
    task = asyncio.create_task(reader.execute())
    while not reader.runners or reader.runners[0].frames_read < 1:
        await asyncio.sleep(0.01)
    started = time.monotonic()
    while reader.runners[0].frames_read < 31:
        await asyncio.sleep(0.01)
    elapsed = time.monotonic() - started
    reader.stop_event.set()
    await asyncio.wait_for(task, 30)
    # 30 frames at 10 fps: never faster than the file's rate (3 s); slower only as far as a loaded machine makes it.
    assert 2.7 < elapsed < 15
    assert reader.runners[0].policy.value == "DROP_OLDEST"  # paced: stale frames are shed, never queued


async def test_http_file_and_hls_playlist(service_env: dict[str, str], repo_root: Path, tmp_path: Path) -> None:
    hls = hls_from(repo_root / "video" / "vtest.mp4", tmp_path / "hls")
    app = web.Application()
    app.router.add_static("/media/", repo_root / "video")
    app.router.add_static("/hls/", hls.parent)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_ports(1)[0]
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        sources = [
            {"source_id": "http", "url": f"http://127.0.0.1:{port}/media/vtest.mp4", "skip_frames": 4},
            {"source_id": "hls", "url": f"http://127.0.0.1:{port}/hls/index.m3u8", "skip_frames": 4},
        ]
        reader = reader_for(service_env, sources=sources)
        await asyncio.wait_for(reader.execute(), 120)
    finally:
        await runner.cleanup()
    assert reader.exit_code == 0
    frames, statuses = await read_stream(reader)
    got = by_source(frames)
    assert len(got["http"]) == 159 and len(got["hls"]) == 159
    assert {s.state for s in statuses if s.state is not SourceState.STARTED} == {SourceState.ENDED}


async def test_a_file_done_for_good_is_not_read_again(service_env: dict[str, str], repo_root: Path, tmp_path: Path) -> None:
    """A restart policy starting the reader again must not replay a file that ended or failed."""
    cut = truncated_copy(repo_root / "video" / "vtest.mp4", tmp_path / "cut.mp4", 0.3)
    whole = {"source_id": "whole", "url": str(repo_root / "video" / "vtest.mp4"), "skip_frames": 39}
    sources = [{"source_id": "cut", "url": str(cut), "skip_frames": 9}, whole]

    first = reader_for(service_env, sources=sources)
    await asyncio.wait_for(first.execute(), 120)
    assert first.exit_code == 0  # the cut file failed, and a restart would not help it
    frames, statuses = await read_stream(first)
    counted = {s: len(f) for s, f in by_source(frames).items()}
    assert counted["whole"] == 20 and 0 < counted["cut"] < 80
    assert sorted((s.source_id, s.state) for s in statuses if s.state is not SourceState.STARTED) == [
        ("cut", SourceState.FAILED),
        ("whole", SourceState.ENDED),
    ]

    again = reader_for(service_env, sources=sources)  # the same files, unchanged: nothing is read again
    await asyncio.wait_for(again.execute(), 60)
    assert again.exit_code == 0 and again.runners == []
    assert await read_stream(again) == ([], [])  # the stream holds nothing new

    cut.write_bytes(cut.read_bytes())  # a new copy of the file (new mtime) is read, the other is not
    third = reader_for(service_env, sources=sources)
    await asyncio.wait_for(third.execute(), 120)
    assert [r.config.source_id for r in third.runners] == ["cut"]
    frames, _ = await read_stream(third)
    assert {s: len(f) for s, f in by_source(frames).items()} == {"cut": counted["cut"]}
