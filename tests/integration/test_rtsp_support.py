"""The test RTSP camera itself, read the way the reader reads it: PyAV over RTSP/TCP."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path

import av
import pytest

from tests.support.rtsp import RtspServer, rtsp_available

VIDEO = Path(__file__).resolve().parents[2] / "video" / "vtest.mp4"
TCP = {"rtsp_transport": "tcp"}
READ_TIMEOUT = 3.0

_unavailable = rtsp_available()
pytestmark = pytest.mark.skipif(_unavailable is not None, reason=_unavailable or "")


@pytest.fixture
def camera() -> Iterator[RtspServer]:
    with RtspServer(VIDEO) as server:
        yield server


def read_frames(url: str, count: int, within: float = 10.0) -> list[av.VideoFrame]:
    # FFmpeg's stream probing alone takes ~2.8 s on this stream, so the open timeout must be well above that.
    deadline = time.monotonic() + within
    frames: list[av.VideoFrame] = []
    with av.open(url, options=TCP, timeout=(within, READ_TIMEOUT)) as container:
        for frame in container.decode(video=0):
            frames.append(frame)
            if len(frames) >= count:
                return frames
            assert time.monotonic() < deadline, f"only {len(frames)} frames from {url} within {within} s"
    raise AssertionError(f"{url} ended after {len(frames)} frames")


def catch_up_to_live(frames: Iterator[av.VideoFrame]) -> None:
    """Consumes the frames FFmpeg buffered while probing the stream (~2.8 s worth, all at once)."""
    for _ in range(100):
        asked = time.monotonic()
        next(frames)
        if time.monotonic() - asked > 0.05:  # that one came off the wire, at the camera's pace
            return
    raise AssertionError("the stream never slowed to 10 fps")


def port_is_open(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def test_serves_the_clip_live(camera: RtspServer) -> None:
    started = time.monotonic()
    frames = read_frames(camera.url, 30)
    elapsed = time.monotonic() - started

    assert camera.url == f"rtsp://127.0.0.1:{camera.port}/live"
    assert {(f.width, f.height) for f in frames} == {(768, 576)}
    # FFmpeg gives the very first RTSP frame no pts; every later one has one.
    times = [f.time for f in frames if f.time is not None]
    assert len(times) >= len(frames) - 1
    assert all(a < b for a, b in pairwise(times)), times
    span = times[-1] - times[0]
    assert span == pytest.approx(0.1 * (len(times) - 1), abs=0.1)  # 10 fps
    # Live, not as fast as possible: a frame cannot arrive before the camera has "filmed" it.
    assert elapsed >= span - 0.3


def test_comes_back_on_the_same_port_after_an_outage(camera: RtspServer) -> None:
    url = camera.url
    with av.open(url, options=TCP, timeout=(10.0, READ_TIMEOUT)) as watcher:
        frames = watcher.decode(video=0)
        next(frames)
        camera.stop()
        # A client connected during the outage sees the stream end (or the connection reset), not a hang.
        stopped = time.monotonic()
        with pytest.raises((StopIteration, av.FFmpegError)):
            for _ in range(100):
                next(frames)
        assert time.monotonic() - stopped < READ_TIMEOUT
    assert not port_is_open(camera.port)

    time.sleep(1.0)
    camera.start()
    assert camera.url == url
    assert len(read_frames(url, 5)) == 5


def test_pause_starves_connected_clients_until_resume(camera: RtspServer) -> None:
    with av.open(camera.url, options=TCP, timeout=(10.0, READ_TIMEOUT)) as client:
        frames = client.decode(video=0)
        catch_up_to_live(frames)
        camera.pause()
        paused = time.monotonic()
        arrivals: list[float] = []
        # FFmpeg's H.264 parser holds the last frame sent until it sees the next one, so the first read
        # timeout releases that stale frame (at ~READ_TIMEOUT) and the second one raises (at ~2 x READ_TIMEOUT).
        with pytest.raises(av.error.ExitError, match="Immediate exit requested"):
            for _ in frames:
                arrivals.append(time.monotonic() - paused)
        raised = time.monotonic() - paused
    # What comes in the first second was on its way before the pause (more of it when a loaded machine left the
    # client behind live); after it, only the stale frame the parser held. A camera still sending gives ~50.
    assert len([a for a in arrivals if a > 1.0]) <= 1, arrivals
    assert raised >= 2 * READ_TIMEOUT - 0.5, (raised, arrivals)
    assert raised < 2 * READ_TIMEOUT + 3.0, (raised, arrivals)
    assert port_is_open(camera.port)  # paused, not gone

    camera.resume()
    assert len(read_frames(camera.url, 5)) == 5
