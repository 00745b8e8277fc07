"""Proof clips (H.264 MP4 at a fixed rate, faststart) and annotated key frames; blocking, run off the loop."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from shared.contracts import Detection, FrameRef


def clip_ticks(start: float, end: float, fps: int) -> list[float]:
    """Output frame times: one every 1/fps from `start`, through `end` inclusive."""
    count = max(1, math.floor((end - start) * fps + 1e-6) + 1)
    return [start + k / fps for k in range(count)]


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


def write_clip(images: Iterable[np.ndarray], path: Path, fps: int) -> None:
    """H.264, yuv420p, faststart: plays in every browser without a download first.

    `images` may be a generator: a long clip is encoded as it is decoded, one frame in memory at a time."""
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
        stream.options = {"preset": "veryfast", "crf": "26"}
        for image in itertools.chain([first], frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image[:even_h, :even_w]), format="bgr24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def draw_detections(image: np.ndarray, detections: list[Detection]) -> np.ndarray:
    out = image.copy()
    height, width = out.shape[:2]
    for det in detections:
        x1, y1, x2, y2 = det.box.to_pixels(width, height)
        cv2.rectangle(out, (x1, y1), (x2, y2), (0, 255, 0), 2)
        caption = f"{det.label} {det.score:.2f}"
        cv2.putText(out, caption, (x1, max(12, y1 - 4)), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 255, 0), 1, cv2.LINE_AA)
    return out
