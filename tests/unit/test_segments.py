"""Proof clips cut from shared segments: the right frames, playable, and each source frame encoded once."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from services.registrator.clips import SEGMENT_SECONDS, ClipFrames, plan_clip, segment_span
from services.registrator.proofs import cut_clip
from services.registrator.segments import (
    EncodedPacket,
    Segment,
    SegmentCache,
    SegmentKey,
    concat_segments,
    encode_segment,
    plan_segments,
)
from shared.contracts import FrameRef
from shared.jpeg import encode_jpeg

FPS = 10
WIDTH, HEIGHT = 64, 48


def level(seq: int) -> int:
    """Each frame of the test source is one flat grey, 6 apart: still told apart after H.264 at crf 29."""
    return 6 + 6 * (seq % 40)


def source(frames: int, every: float = 0.1) -> tuple[list[FrameRef], dict[str, bytes]]:
    refs = [
        FrameRef(source_id="cam", seq=i, pts=round(i * every, 6), wall_time=0, url=f"http://h/{i}", width=WIDTH, height=HEIGHT)
        for i in range(frames)
    ]
    return refs, {r.url: encode_jpeg(np.full((HEIGHT, WIDTH, 3), level(r.seq), np.uint8), 95) for r in refs}


def clip_for(refs: list[FrameRef], start: float, end: float) -> ClipFrames:
    """As the registrator plans an event's clip: its window widened to whole segments, up to the latest frame."""
    lo, hi = segment_span(start, end, FPS)
    hi = min(hi, refs[-1].pts)
    return plan_clip([r for r in refs if r.pts <= hi], lo, hi, FPS)


def decoded(path: Path) -> tuple[list[int], list[float], list[bool]]:
    """Each frame's grey level, time in seconds and keyframe flag."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264" and stream.average_rate == FPS
        frames = list(container.decode(stream))
    assert all(f.format.name == "yuv420p" for f in frames)
    levels = [round(float(f.to_ndarray(format="gray").mean())) for f in frames]
    return levels, [float(f.time) for f in frames], [f.key_frame for f in frames]


def test_a_clip_from_segments_shows_its_frames_in_order_and_overruns_by_less_than_a_segment(tmp_path: Path) -> None:
    refs, jpegs = source(120)  # 12 s at 10 fps
    start, end = 2.35, 5.22  # an event with its pre- and post-roll
    clip = clip_for(refs, start, end)
    cut_clip(plan_segments(clip, FPS), {}, jpegs, SegmentCache(2**30, 60.0), tmp_path / "clip.mp4", FPS)

    levels, times, keys = decoded(tmp_path / "clip.mp4")
    first, last = clip.first_tick / FPS, (clip.first_tick + len(clip) - 1) / FPS
    assert len(levels) == len(clip) == 40  # 2.0 s to 5.9 s
    assert all(abs(got - level(r.seq)) <= 2 for got, r in zip(levels, clip.refs, strict=True)), levels
    assert [r.seq for r in clip.refs] == list(range(20, 60))  # in order, each tick its frame
    assert start - SEGMENT_SECONDS < first <= start and end <= last < end + SEGMENT_SECONDS
    assert times == pytest.approx([i / FPS for i in range(40)])  # the clip's own clock, one tick per frame
    assert [i for i, k in enumerate(keys) if k] == [0, 20]  # a keyframe at each segment's start
    head = (tmp_path / "clip.mp4").read_bytes()[:4096]  # faststart: the index before the media
    assert head.find(b"moov") != -1 and (head.find(b"mdat") == -1 or head.find(b"moov") < head.find(b"mdat"))


def test_a_slow_source_fills_every_tick_across_segment_boundaries(tmp_path: Path) -> None:
    refs, jpegs = source(12, every=0.5)  # read at 2 fps: each frame shown for 5 ticks of the clip
    clip = clip_for(refs, 1.2, 3.4)
    cut_clip(plan_segments(clip, FPS), {}, jpegs, SegmentCache(2**30, 60.0), tmp_path / "clip.mp4", FPS)
    levels, _, _ = decoded(tmp_path / "clip.mp4")
    assert [r.seq for r in clip.refs] == [n for n in range(8) for _ in range(5)]  # 0.0 s to 3.9 s
    assert all(abs(got - level(r.seq)) <= 2 for got, r in zip(levels, clip.refs, strict=True)), levels


def test_overlapping_events_encode_each_source_frame_once(tmp_path: Path) -> None:
    refs, jpegs = source(120)
    cache = SegmentCache(2**30, 60.0)
    windows = [(2.35, 5.22), (3.1, 8.7), (4.0, 6.0)]  # three objects in view at once
    clips = [clip_for(refs, a, b) for a, b in windows]
    for i, clip in enumerate(clips):
        cut_clip(plan_segments(clip, FPS), {}, jpegs, cache, tmp_path / f"{i}.mp4", FPS)
        levels, _, _ = decoded(tmp_path / f"{i}.mp4")
        assert all(abs(got - level(r.seq)) <= 2 for got, r in zip(levels, clip.refs, strict=True)), (i, levels)
    ticks = {clip.first_tick + k for clip in clips for k in range(len(clip))}
    assert sum(len(c) for c in clips) == 160  # what one encode per event costs...
    assert cache.encoded_frames == len(ticks) == 80  # ...and here: 2.0 s to 9.9 s, each tick once
    assert len(cache) == 4


def test_the_clip_given_segments_needs_no_frames(tmp_path: Path) -> None:
    """A retry after the frames expired in SeaweedFS: the segments held are enough, and nothing is encoded."""
    refs, jpegs = source(40)
    cache = SegmentCache(2**30, 60.0)
    plans = plan_segments(clip_for(refs, 0.5, 2.5), FPS)
    cut_clip(plans, {}, jpegs, cache, tmp_path / "a.mp4", FPS)
    encoded = cache.encoded_frames
    ready = {p.key: data for p in plans if (data := cache.get(p.key)) is not None}
    cut_clip(plans, ready, {}, SegmentCache(2**30, 60.0), tmp_path / "b.mp4", FPS)
    assert cache.encoded_frames == encoded and (tmp_path / "a.mp4").read_bytes() == (tmp_path / "b.mp4").read_bytes()


def test_segments_split_at_the_grid_and_partial_ones_are_their_own(tmp_path: Path) -> None:
    refs, jpegs = source(40)
    clip = plan_clip(refs, 0.7, 3.1, FPS)  # not widened: partial segments at both ends
    plans = plan_segments(clip, FPS)
    assert [(p.key.first_tick, len(p.refs)) for p in plans] == [(7, 13), (20, 12)]
    whole = plan_segments(plan_clip(refs, 2.0, 3.9, FPS), FPS)[0]
    assert whole.key != plans[-1].key  # a live edge's part of a segment is never served as the whole of it
    odd = plan_segments(ClipFrames(0, [r.model_copy(update={"width": 65, "height": 49}) for r in refs[:3]]), FPS)
    assert (odd[0].key.width, odd[0].key.height) == (64, 48)  # even, as yuv420p needs
    # A segment of one frame joins the next one, B-frames and all.
    short = plan_clip(refs, 1.9, 2.5, FPS)
    cut_clip(plan_segments(short, FPS), {}, jpegs, SegmentCache(2**30, 60.0), tmp_path / "short.mp4", FPS)
    levels, times, _ = decoded(tmp_path / "short.mp4")
    assert [round((got - 6) / 6) for got in levels] == list(range(19, 26)) and len(times) == 7


def test_cache_is_bounded_by_bytes_and_by_age() -> None:
    now = [0.0]
    cache = SegmentCache(max_bytes=250, max_age=10.0, clock=lambda: now[0])
    keys = [SegmentKey(FPS, 8, 8, tick, (str(tick),)) for tick in range(4)]
    segment = Segment(b"", 8, 8, (EncodedPacket(b"x" * 100, 0, 0, True),))
    for key in keys[:3]:
        cache.put(key, segment)
    assert cache.get(keys[0]) is None and cache.bytes == 200  # the least recently used went first
    assert cache.get(keys[1]) is not None  # used: now the newest
    cache.put(keys[3], segment)
    assert cache.get(keys[2]) is None and cache.get(keys[1]) is not None
    now[0] = 10.5
    assert cache.get(keys[3]) is None and len(cache) == 0 and cache.bytes == 0


def test_a_source_that_changed_size_is_scaled_to_the_clip(tmp_path: Path) -> None:
    key = SegmentKey(FPS, WIDTH, HEIGHT, 0, ("a", "b"))
    images = [np.full((HEIGHT, WIDTH, 3), 60, np.uint8), np.full((2 * HEIGHT + 1, 2 * WIDTH, 3), 120, np.uint8)]
    concat_segments([encode_segment(images, key)], tmp_path / "clip.mp4", FPS)
    with av.open(str(tmp_path / "clip.mp4")) as container:
        sizes = [(f.width, f.height) for f in container.decode(video=0)]
    assert sizes == [(WIDTH, HEIGHT)] * 2


def test_segments_of_different_sizes_are_refused_with_the_reason(tmp_path: Path) -> None:
    image = np.full((HEIGHT, WIDTH, 3), 60, np.uint8)
    small = encode_segment([image], SegmentKey(FPS, WIDTH, HEIGHT, 0, ("a",)))
    large = encode_segment([image], SegmentKey(FPS, 2 * WIDTH, 2 * HEIGHT, 10, ("a",)))
    with pytest.raises(ValueError, match=r"different H\.264 parameters"):
        concat_segments([small, large], tmp_path / "clip.mp4", FPS)
