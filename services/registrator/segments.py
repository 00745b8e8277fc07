"""Proof clips cut from shared segments: each source's frames are encoded once, whatever the number of events.

In object mode a busy camera opens an event per tracked object, and their clips (pre-roll, event, post-roll)
overlap. Encoding each clip from its frames encoded the same frames once per event. Here the source's clock is
cut into segments of SEGMENT_SECONDS (clips.segment_span): each is encoded on its own, so it starts with a
keyframe, and kept in a SegmentCache; a clip is the concatenation of the segments covering its window, copied
packet by packet into one MP4 (a remux: no decoding, no encoding). The cost of proofs is then bounded per source
frame, and each clip costs a copy of bytes (about 1.5 ms for 4 s at 768x576). A clip overruns its window by
less than a segment at each end (clips.segment_span says why that is fine).
"""

from __future__ import annotations

import functools
import io
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, NamedTuple

import av
import cv2
import numpy as np

from services.registrator.clips import CLIP_ENCODING, SEGMENT_SECONDS, ClipEncoding, ClipFrames, video_frame
from shared.contracts import FrameRef


class SegmentKey(NamedTuple):
    """What a segment shows, and how: the same frames at the same ticks and size give the same bytes."""

    fps: int
    width: int
    height: int
    first_tick: int
    urls: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class SegmentPlan:
    key: SegmentKey
    refs: list[FrameRef]  # the frame shown at each of its ticks


def plan_segments(clip: ClipFrames, fps: int) -> list[SegmentPlan]:
    """The clip's ticks cut at the segment boundaries of the source's grid (every SEGMENT_SECONDS); the first and
    last may be partial where the clip starts or ends between boundaries (a window cut by the live edge).

    Every segment is encoded at the size of the clip's first frame (even, as H.264 in yuv420p needs), so that all of
    them share one set of H.264 parameters and can be concatenated."""
    if not clip.refs:
        raise ValueError("a clip needs at least one frame")
    per_segment = fps * SEGMENT_SECONDS
    width, height = clip.refs[0].width // 2 * 2, clip.refs[0].height // 2 * 2
    plans: list[SegmentPlan] = []
    i = 0
    while i < len(clip.refs):
        tick = clip.first_tick + i
        count = min(per_segment - tick % per_segment, len(clip.refs) - i)
        refs = clip.refs[i : i + count]
        plans.append(SegmentPlan(SegmentKey(fps, width, height, tick, tuple(r.url for r in refs)), refs))
        i += count
    return plans


class EncodedPacket(NamedTuple):
    data: bytes
    pts: int  # ticks from the segment's first
    dts: int
    keyframe: bool


@dataclass(frozen=True, slots=True)
class Segment:
    """A segment's H.264 packets, as x264 gave them (Annex B), and the parameter sets (SPS, PPS) they need."""

    parameters: bytes
    width: int
    height: int
    packets: tuple[EncodedPacket, ...]

    @property
    def size(self) -> int:
        return len(self.parameters) + sum(len(p.data) for p in self.packets)


class SegmentCache:
    """Encoded segments, the most recently used kept: bounded by bytes and by age.

    Used from the event loop (which segments a clip still needs) and from the render thread (storing what it
    encoded), hence the lock; it is never held while encoding. A segment missed here is encoded again: the cache
    bounds the work, never what a clip shows."""

    def __init__(self, max_bytes: int, max_age: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_bytes, self.max_age, self._clock = max_bytes, max_age, clock
        self._items: OrderedDict[SegmentKey, tuple[float, Segment]] = OrderedDict()
        self._lock = threading.Lock()
        self.bytes = 0
        self.encoded_frames = 0  # ticks encoded over the cache's life: what the proofs cost
        self.hits = 0
        self.misses = 0

    def get(self, key: SegmentKey) -> Segment | None:
        with self._lock:
            self._expire()
            item = self._items.get(key)
            if item is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return item[1]

    def put(self, key: SegmentKey, segment: Segment) -> None:
        with self._lock:
            old = self._items.pop(key, None)
            self.bytes += segment.size - (old[1].size if old else 0)
            self._items[key] = (self._clock(), segment)
            self._expire()
            while self.bytes > self.max_bytes and len(self._items) > 1:
                self._evict_oldest()

    def _expire(self) -> None:
        horizon = self._clock() - self.max_age
        # Recently used ones are at the end; an old one used again moved there, so stop at the first young one.
        while self._items and next(iter(self._items.values()))[0] < horizon:
            self._evict_oldest()

    def _evict_oldest(self) -> None:
        _, (_, segment) = self._items.popitem(last=False)
        self.bytes -= segment.size

    def __len__(self) -> int:
        return len(self._items)


def encode_segment(images: Iterable[np.ndarray], key: SegmentKey, encoding: ClipEncoding = CLIP_ENCODING) -> Segment:
    """One segment at the clips' settings, by a fresh encoder: it starts with a keyframe and needs no other segment.
    The same array given again (a source slower than the clip) is converted once."""
    codec = av.CodecContext.create("libx264", "w")
    assert isinstance(codec, av.VideoCodecContext)
    codec.width, codec.height, codec.pix_fmt = key.width, key.height, "yuv420p"
    codec.time_base, codec.framerate = Fraction(1, key.fps), Fraction(key.fps, 1)
    codec.flags |= av.codec.context.Flags.global_header  # the parameter sets apart, as MP4 keeps them
    codec.options = {k: str(v) for k, v in encoding.options().items()}
    packets: list[EncodedPacket] = []
    last: tuple[np.ndarray, av.VideoFrame] | None = None
    for tick, image in enumerate(images):
        if last is None or last[0] is not image:
            last = image, video_frame(np.ascontiguousarray(_fit(image, key.width, key.height)), encoding.cv2_convert)
        last[1].pts = tick
        packets.extend(_packets(codec.encode(last[1])))
    packets.extend(_packets(codec.encode(None)))
    if not packets:
        raise ValueError("a segment needs at least one frame")
    return Segment(codec.extradata or b"", key.width, key.height, tuple(packets))


def _packets(packets: Iterable[av.Packet[Any]]) -> list[EncodedPacket]:
    return [EncodedPacket(bytes(p), int(p.pts or 0), int(p.dts or 0), p.is_keyframe) for p in packets]


def _fit(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """The frame at the clip's size: an odd row or column is cut (as write_clip does); a source that changed
    its size within the clip is scaled, so that every segment has the same H.264 parameters."""
    rows, cols = image.shape[:2]
    if rows - height in (0, 1) and cols - width in (0, 1):
        return image[:height, :width]
    resized: np.ndarray = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
    return resized


@functools.cache
def _h264_template() -> av.video.stream.VideoStream:
    """An H.264 stream to copy an output stream's settings from (PyAV makes a stream without an encoder only from
    another stream); its size and parameter sets are replaced by the segments'. Made once: a 16x16 frame."""
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width = stream.height = 16
        stream.pix_fmt = "yuv420p"
        for packet in stream.encode(av.VideoFrame.from_ndarray(np.zeros((24, 16), np.uint8), format="yuv420p")):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    # Kept open for the process: the stream refers to its container.
    return av.open(io.BytesIO(buffer.getvalue()), mode="r", format="mp4").streams.video[0]


def concat_segments(segments: list[Segment], path: Path, fps: int) -> int:
    """The segments' packets, in order, into one faststart MP4 at `fps`; returns its frame count. No re-encoding:
    each segment starts with a keyframe, and all share one set of H.264 parameters (checked).

    Each segment's times are moved by the ticks before it. B-frames keep their reordering: x264 decodes a segment's
    packets in order k at k - delay, and its delay is shorter in a segment too short for B-frames, so every
    segment is given the clip's longest delay: still no packet decoded after it is shown, and none out of order."""
    if not segments:
        raise ValueError("a clip needs at least one segment")
    first = segments[0]
    if any((s.parameters, s.width, s.height) != (first.parameters, first.width, first.height) for s in segments):
        raise ValueError("segments with different H.264 parameters cannot be joined without re-encoding")
    delay = max(k - packet.dts for segment in segments for k, packet in enumerate(segment.packets))
    path.parent.mkdir(parents=True, exist_ok=True)
    offset, tick_base = 0, Fraction(1, fps)
    with av.open(str(path), mode="w", format="mp4", options={"movflags": "+faststart"}) as out:
        stream = out.add_stream_from_template(_h264_template())
        stream.codec_context.width, stream.codec_context.height = first.width, first.height
        stream.codec_context.extradata = first.parameters
        stream.codec_context.framerate = Fraction(fps, 1)
        stream.time_base = tick_base
        for segment in segments:
            for k, (data, pts, _, keyframe) in enumerate(segment.packets):
                packet = av.Packet(data)
                packet.pts, packet.dts, packet.duration, packet.time_base = offset + pts, offset + k - delay, 1, tick_base
                packet.is_keyframe, packet.stream = keyframe, stream
                out.mux(packet)
            offset += len(segment.packets)
    return offset
