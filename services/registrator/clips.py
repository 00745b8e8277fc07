"""Proof clips (H.264 MP4 at a fixed rate, faststart) and annotated key frames; blocking, run off the loop."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from shared.contracts import Detection, FrameRef

SEGMENT_SECONDS = 2  # a proof clip is cut from whole segments of this length (segments.py)


def segment_span(start: float, end: float, fps: int) -> tuple[float, float]:
    """[start, end] widened to whole segments of the source's clock: from the segment boundary at or before `start`
    to the last tick of the segment holding `end`.

    The clip then overruns its window by less than one segment (SEGMENT_SECONDS) at each end: a little more of
    the scene around an event that already has seconds of pre- and post-roll, in a clip that stays short. In
    exchange every clip of a source is cut from the same segments, each encoded once (segments.py), instead of each
    event encoding all of its frames: with an event per tracked object, a busy camera's clips overlap many times."""
    per_segment = fps * SEGMENT_SECONDS
    first = _tick_at_or_before(start, fps) // per_segment * per_segment
    last = (_tick_at_or_before(end, fps) // per_segment + 1) * per_segment - 1
    return first / fps, last / fps


@dataclass(frozen=True, slots=True)
class ClipFrames:
    """The frame shown at each tick of a clip; the ticks lie on the source's grid of 1/fps (tick k at k/fps of its
    stream time), so that two clips of one source share their segments."""

    first_tick: int
    refs: list[FrameRef]

    def __len__(self) -> int:
        return len(self.refs)


def plan_clip(refs: list[FrameRef], start: float, end: float, fps: int) -> ClipFrames:
    """The ticks of the grid in [start, end] (at least one), each with the latest frame at or before it.

    Without any frame (the buffer, read back after a restart or a move, begins after the window) there is nothing
    to cut, and no retry can help: the error says so at once."""
    if not refs:
        raise ValueError(
            f"no frame of the source is buffered at or before {end:.1f} s: its frames were dropped before the "
            "proofs were cut (the source moved or restarted later than the frame stream keeps them)"
        )
    first = _tick_at_or_after(start, fps)
    last = max(first, _tick_at_or_before(end, fps))
    return ClipFrames(first, pick_frames(refs, [k / fps for k in range(first, last + 1)]))


def _tick_at_or_after(t: float, fps: int) -> int:
    return math.ceil(t * fps - 1e-6)


def _tick_at_or_before(t: float, fps: int) -> int:
    return math.floor(t * fps + 1e-6)


def pick_frames(refs: list[FrameRef], ticks: list[float]) -> list[FrameRef]:
    """For each tick, the latest frame at or before it (the first frame for ticks before any).

    A source read at another rate, or with skipped frames, still gives a clip at exactly `fps`.
    """
    if not refs:
        return []
    chosen, i = [], 0
    for tick in ticks:
        while i + 1 < len(refs) and refs[i + 1].pts <= tick + 1e-6:
            i += 1
        chosen.append(refs[i])
    return chosen


@dataclass(frozen=True, slots=True)
class ClipEncoding:
    """x264's settings for the proof clips. Always H.264 in yuv420p at a fixed rate: what every browser plays."""

    preset: str = "superfast"
    crf: int = 29  # superfast at 29: about the size and picture of veryfast at 26, for about half its CPU
    threads: int = 0  # 0: x264's choice; the CPU is the same with 1, the clip is ready sooner with a free core
    tune: str | None = None
    # yuv420p made by cv2 (BGR2YUV_I420, one SIMD pass) rather than by PyAV's swscale from bgr24.
    cv2_convert: bool = True

    def options(self) -> dict[str, object]:
        options: dict[str, object] = {"preset": self.preset, "crf": str(self.crf), "threads": str(self.threads)}
        return options | ({"tune": self.tune} if self.tune else {})


# Chosen by measurement on the sample video's frames (python -m bench.clips; docs/performance.md has the table).
CLIP_ENCODING = ClipEncoding()


def write_clip(images: Iterable[np.ndarray], path: Path, fps: int, encoding: ClipEncoding = CLIP_ENCODING) -> None:
    """H.264, yuv420p, faststart: plays in every browser without a download first.

    `images` may be a generator: a long clip is encoded as it is decoded, one frame in memory at a time. The same
    array given again (a source slower than `fps` shows one frame for several ticks) is converted once."""
    frames = iter(images)
    first = next(frames, None)
    if first is None:
        raise ValueError("a clip needs at least one frame")
    height, width = first.shape[:2]
    even_w, even_h = width - width % 2, height - height % 2
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w", format="mp4", options={"movflags": "+faststart"}) as container:
        stream = container.add_stream("libx264", rate=Fraction(fps, 1))
        stream.width, stream.height = even_w, even_h
        stream.pix_fmt = "yuv420p"
        stream.options = encoding.options()
        last: tuple[np.ndarray, av.VideoFrame] | None = None
        for index, image in enumerate(itertools.chain([first], frames)):
            if last is None or last[0] is not image:
                last = image, video_frame(np.ascontiguousarray(image[:even_h, :even_w]), encoding.cv2_convert)
            frame = last[1]
            frame.pts = index  # set each time: a frame given again must not repeat its time
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def video_frame(image: np.ndarray, cv2_convert: bool) -> av.VideoFrame:
    """A BGR image as the yuv420p frame x264 takes."""
    if cv2_convert:
        planes: np.ndarray = cv2.cvtColor(image, cv2.COLOR_BGR2YUV_I420)  # Y, then U and V: uint8, rows x 1.5
        return av.VideoFrame.from_ndarray(planes.astype(np.uint8, copy=False), format="yuv420p")
    return av.VideoFrame.from_ndarray(image, format="bgr24")


def draw_detections(image: np.ndarray, detections: list[Detection]) -> np.ndarray:
    out = image.copy()
    height, width = out.shape[:2]
    for det in detections:
        x1, y1, x2, y2 = det.box.to_pixels(width, height)
        cv2.rectangle(out, (x1, y1), (x2, y2), (0, 255, 0), 2)
        caption = f"{det.label} {det.score:.2f}"
        cv2.putText(out, caption, (x1, max(12, y1 - 4)), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 255, 0), 1, cv2.LINE_AA)
    return out
