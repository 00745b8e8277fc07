"""A live camera (a real RTSP server) that goes away, and one that goes silent: the reader copes alone."""

import asyncio
import time
from itertools import pairwise
from pathlib import Path

import nats
import pytest

from fleet.clients import connect_nats
from services.reader.service import ReaderService
from shared.contracts import SourceHealth, SourceState
from tests.integration.helpers import wait_for
from tests.integration.test_reader import read_stream
from tests.integration.test_reader_sources import reader_for
from tests.support.rtsp import RtspServer, rtsp_available

pytestmark = pytest.mark.skipif(rtsp_available() is not None, reason=rtsp_available() or "")

LIVE = {"reconnect_initial": 0.5, "reconnect_max": 2, "status_interval": 0.5, "max_width": 320, "open_timeout": 5}


class HealthLog:
    """Every source health report the reader publishes on NATS."""

    def __init__(self) -> None:
        self.reports: list[SourceHealth] = []

    async def attach(self, env: dict[str, str], reader: ReaderService) -> nats.NATS:
        nc = await connect_nats(env)

        async def on_msg(msg: nats.aio.msg.Msg) -> None:
            self.reports.append(SourceHealth.from_bytes(msg.data))

        await nc.subscribe(reader.bus.subjects.source_health_all, cb=on_msg)
        return nc

    def states(self) -> list[SourceState]:
        return [r.state for r in self.reports]


async def streaming_reader(
    env: dict[str, str], url: str, **settings: object
) -> tuple[ReaderService, HealthLog, nats.NATS, asyncio.Task[None]]:
    """A reader on the camera, its health reports recorded, returned once its first 20 frames are out."""
    reader = reader_for(env, video_source=url, **settings, **LIVE)
    health = HealthLog()
    nc = await health.attach(env, reader)
    task = asyncio.create_task(reader.execute())
    await wait_for(lambda: bool(reader.runners) and reader.runners[0].frames_published >= 20, 40, "first frames")
    return reader, health, nc, task


@pytest.mark.timeout(150)
async def test_camera_outage_is_reported_and_survived_without_a_restart(service_env: dict[str, str], repo_root: Path) -> None:
    with RtspServer(repo_root / "video" / "vtest.mp4") as server:
        reader, health, nc, task = await streaming_reader(service_env, server.url, stall_timeout=5, read_timeout=3)
        runner = reader.runners[0]
        assert runner.live and runner.policy.value == "DROP_OLDEST"

        server.stop()
        outage = time.monotonic()
        await wait_for(lambda: runner.state is not SourceState.STREAMING, 10, "the outage to be noticed")
        noticed = time.monotonic() - outage
        await asyncio.sleep(max(0.0, 10 - (time.monotonic() - outage)))  # the camera is away for 10 s
        assert runner.state in (SourceState.RECONNECTING, SourceState.STALLED)
        before = runner.frames_published
        server.start()
        await wait_for(lambda: runner.frames_published >= before + 20, 40, "frames after the camera came back")
        assert runner.state is SourceState.STREAMING and runner.reconnects >= 1
        assert not task.done()  # the same process went on
        reader.stop_event.set()
        await asyncio.wait_for(task, 30)
        await nc.drain()

    assert noticed < 5
    states = health.states()
    assert SourceState.RECONNECTING in states
    assert states.index(SourceState.RECONNECTING) < len(states) - 1 - states[::-1].index(SourceState.STREAMING)
    outage_report = next(r for r in health.reports if r.state is SourceState.RECONNECTING)
    assert outage_report.last_error and outage_report.url == server.url
    frames, _ = await read_stream(reader)
    seqs = [f.seq for f in frames]
    assert seqs == sorted(seqs)
    # A live source sheds frames when it falls behind (the burst an RTSP open delivers): every gap is a counted drop.
    assert len(frames) + sum(runner.dropped.values()) == runner.frames_read == seqs[-1] + 1
    assert all(b.pts > a.pts for a, b in pairwise(frames))  # stream time keeps counting


@pytest.mark.timeout(150)
async def test_a_camera_that_goes_silent_trips_the_watchdog(service_env: dict[str, str], repo_root: Path) -> None:
    with RtspServer(repo_root / "video" / "vtest.mp4") as server:
        # The decoder's own read timeout is set long, so the reader's watchdog is what must notice.
        reader, health, nc, task = await streaming_reader(service_env, server.url, stall_timeout=3, read_timeout=30)
        runner = reader.runners[0]

        server.pause()  # the connection stays open; no frame comes
        paused = time.monotonic()
        await wait_for(lambda: SourceState.STALLED in health.states(), 15, "the watchdog")
        fired = time.monotonic() - paused
        server.resume()
        before = runner.frames_published
        await wait_for(lambda: runner.frames_published >= before + 20, 60, "frames after the camera spoke again")
        reader.stop_event.set()
        await asyncio.wait_for(task, 30)
        await nc.drain()

    assert 2.5 < fired < 8  # stall_timeout is 3 s (plus at most one buffered frame)
    stalled = next(r for r in health.reports if r.state is SourceState.STALLED)
    assert "no frame for 3 s" in (stalled.last_error or "")
