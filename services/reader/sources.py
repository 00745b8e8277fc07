"""Frame sources: PyAV and OpenCV backends behind one blocking iterator (run off the event loop)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import cv2
import numpy as np

from services.reader.settings import SourceConfig
from shared.secrets import scrub

_LIVE_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "udp", "rtp", "srt", "tcp")


class SourceError(RuntimeError):
    """The source cannot be opened or stopped decoding: one clear line for the log and the status."""


@dataclass(frozen=True)
class DecodedFrame:
    index: int  # position in this opening of the source, counting every decoded frame
    pts: float  # seconds from the first frame of this opening
    raw: Any  # a BGR ndarray, or a decoder frame not yet converted

    def bgr(self) -> np.ndarray:
        """BGR uint8. The colour conversion is left to the caller's thread: the decode thread is the one
        stage that cannot run in parallel, so it does as little as possible.

        One swscale thread: by default each frame gets its own scaler with a slice thread per core, kept until the
        frame is freed. With 8 sources that was hundreds of short-lived threads, each leaving a malloc arena behind:
        the reader grew about 20 MB a minute (`make soak-reader SOURCES=8`). One thread costs no more CPU per frame."""
        if isinstance(self.raw, np.ndarray):
            return self.raw
        frame: np.ndarray = self.raw.to_ndarray(format="bgr24", threads=1)
        return frame


class FrameSource(Protocol):
    fps: float
    expected_frames: int  # what the container declares; 0 when unknown (streams)

    def frames(self) -> Iterator[DecodedFrame]: ...

    def close(self) -> None: ...


def _scheme(url: str) -> str:
    return url.split("://", 1)[0].lower() if "://" in url else ""


def usb_device(url: str) -> int | str | None:
    """A USB camera: an OpenCV device index ("0") or a V4L2 device path."""
    if url.isdigit():
        return int(url)
    if url.startswith("/dev/video"):
        return url
    return None


def is_live(config: SourceConfig) -> bool:
    if config.live is not None:
        return config.live
    return _scheme(config.url) in _LIVE_SCHEMES or usb_device(config.url) is not None


def _check_file(url: str) -> None:
    if _scheme(url) or usb_device(url) is not None:
        return
    if not os.path.exists(url):
        raise SourceError(f"video file not found: {url}")
    if not os.access(url, os.R_OK):
        raise SourceError(f"video file not readable: {url}")


class AvSource:
    def __init__(self, config: SourceConfig, open_timeout: float, read_timeout: float) -> None:
        import av

        url = config.url
        _check_file(url)
        options: dict[str, str] = {}
        fmt: str | None = None
        if _scheme(url).startswith("rtsp"):
            options["rtsp_transport"] = config.rtsp_transport
        device = usb_device(url)
        if device is not None:
            fmt, url = "v4l2", device if isinstance(device, str) else f"/dev/video{device}"
        try:
            # The read timeout makes a silent peer raise inside the decoder instead of blocking its thread forever.
            self._container = av.open(url, format=fmt, options=options, timeout=(open_timeout, read_timeout))
        except (av.FFmpegError, OSError) as exc:
            # PyAV's message quotes the URL as given, password and all.
            raise SourceError(scrub(f"cannot open {config.url}: {exc}")) from exc
        videos = self._container.streams.video
        if config.stream_index >= len(videos):
            self._container.close()
            raise SourceError(
                f"{scrub(config.url)} has {len(videos)} video stream(s); stream index {config.stream_index} does not exist"
            )
        self._stream = videos[config.stream_index]
        # Frame-level threading nearly halves H.264 decode time per frame (DESIGN.md §5).
        self._stream.thread_type = "AUTO"
        rate = self._stream.average_rate or self._stream.guessed_rate
        self.fps = float(rate) if rate else 25.0
        self.expected_frames = int(self._stream.frames or 0)
        self._url = scrub(config.url)

    def frames(self) -> Iterator[DecodedFrame]:
        import av

        first: float | None = None
        index = 0
        try:
            for frame in self._container.decode(self._stream):
                t = frame.time if frame.time is not None else index / self.fps
                first = t if first is None else first
                yield DecodedFrame(index, max(0.0, t - first), frame)
                index += 1
        except (av.FFmpegError, OSError) as exc:
            raise SourceError(f"decoding {self._url} failed after {index} frame(s): {exc}") from exc

    def close(self) -> None:
        self._container.close()


class OpenCvSource:
    def __init__(self, config: SourceConfig, open_timeout: float, read_timeout: float) -> None:
        _check_file(config.url)
        device = usb_device(config.url)
        if device is not None:
            self._cap = cv2.VideoCapture(device)
        else:
            if _scheme(config.url).startswith("rtsp"):
                # OpenCV's FFmpeg backend takes its options from the environment only (process-wide).
                os.environ["OPENCV_FFMPEG_CAPTURE_OPTIONS"] = f"rtsp_transport;{config.rtsp_transport}"
            params = [
                cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
                int(open_timeout * 1000),
                cv2.CAP_PROP_READ_TIMEOUT_MSEC,
                int(read_timeout * 1000),
            ]
            if config.stream_index:
                params += [cv2.CAP_PROP_VIDEO_STREAM, config.stream_index]
            self._cap = cv2.VideoCapture(config.url, cv2.CAP_FFMPEG, params)
        if not self._cap.isOpened():
            raise SourceError(f"cannot open {scrub(config.url)} with OpenCV")
        fps = self._cap.get(cv2.CAP_PROP_FPS)
        self.fps = fps if fps and 0 < fps < 1000 else 25.0
        self.expected_frames = max(0, int(self._cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)) if device is None else 0
        self._timed = device is None

    def frames(self) -> Iterator[DecodedFrame]:
        index = 0
        while True:
            ok, image = self._cap.read()
            if not ok or image is None:
                return
            msec = self._cap.get(cv2.CAP_PROP_POS_MSEC) if self._timed else 0.0
            pts = msec / 1000.0 if msec and msec > 0 else index / self.fps
            yield DecodedFrame(index, pts, image)
            index += 1

    def close(self) -> None:
        self._cap.release()


def open_source(config: SourceConfig, open_timeout: float = 10.0, read_timeout: float = 5.0) -> FrameSource:
    if config.reader_type == "av":
        return AvSource(config, open_timeout, read_timeout)
    return OpenCvSource(config, open_timeout, read_timeout)
