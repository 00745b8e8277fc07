"""Cutting an event's proofs: its clip from the source's shared segments (segments.py), its key frames; stored twice."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from services.registrator.clips import ClipFrames, draw_detections
from services.registrator.events import OpenEvent
from services.registrator.segments import (
    Segment,
    SegmentCache,
    SegmentKey,
    SegmentPlan,
    concat_segments,
    encode_segment,
    plan_segments,
)
from shared.contracts import FrameRef
from shared.jpeg import decode_jpeg, encode_jpeg
from shared.storage import SeaweedStorage

# Clips are decoded and encoded on one thread (x264 has its own threads for the encoding): the frames'
# buffers then come from one allocator arena, not one per executor thread, which kept the RSS climbing.
_RENDER_THREAD = ThreadPoolExecutor(1, thread_name_prefix="render")

# The segments of every source this process holds. Bytes: 8 cameras at 768x576 and 10 fps make about 0.4 MB of
# segments a second, so this keeps about 150 s of them, more than most events of a source overlap; age: an older
# segment serves a retry at most (its frames may have expired). A miss costs an encode, never a wrong clip.
SEGMENTS = SegmentCache(max_bytes=64 * 2**20, max_age=180.0)


def proof_paths(tmp_path: Path, event_id: str) -> tuple[Path, Path, Path]:
    """The clip, the raw key frame and the key frame with boxes, under TMP_PATH/<event_id>/."""
    folder = tmp_path / event_id
    return folder / f"{event_id}.mp4", folder / f"{event_id}.jpg", folder / f"{event_id}_boxes.jpg"


def remote_folder(event_id: str) -> str:
    """Where the proofs live in the SeaweedFS filer, without TTL."""
    return f"vigil/events/{event_id}"


def decoded_once(chosen: list[FrameRef], jpegs: dict[str, bytes], keep: str, kept: dict[str, np.ndarray]) -> Iterator[np.ndarray]:
    """The segment's images, each stored frame decoded once, as the encoder takes them. A tick that shows the frame
    before it again (a source slower than the clip) gets the same array, which write_clip converts once; the
    frame at `keep` (the key frame, usually one of the clip's) is left in `kept` on the way."""
    url, image = "", np.empty(0, np.uint8)
    for ref in chosen:
        if ref.url != url:
            url, image = ref.url, decode_jpeg(jpegs[ref.url])
            if url == keep:
                kept[url] = image
        yield image


def cut_clip(
    plans: list[SegmentPlan],
    ready: dict[SegmentKey, Segment],
    jpegs: dict[str, bytes],
    segments: SegmentCache,
    path: Path,
    fps: int,
    keep: str = "",
) -> dict[str, np.ndarray]:
    """The clip from its segments: those in `ready`, or made meanwhile by another clip, are copied; the others are
    encoded from `jpegs` and cached. Blocking: run on the render thread, whose single worker is what guarantees that
    a segment two clips wait for is encoded once. Returns the key frame (`keep`) if it was decoded on the way."""
    kept: dict[str, np.ndarray] = {}
    parts = []
    for plan in plans:
        segment = ready.get(plan.key) or segments.get(plan.key)
        if segment is None:
            segment = encode_segment(decoded_once(plan.refs, jpegs, keep, kept), plan.key)
            segments.encoded_frames += len(plan.refs)  # only the render thread writes it
            segments.put(plan.key, segment)
        parts.append(segment)
    concat_segments(parts, path, fps)
    return kept


async def make_proofs(
    storage: SeaweedStorage,
    tmp_path: Path,
    event: OpenEvent,
    clip: ClipFrames,
    fps: int,
    segments: SegmentCache = SEGMENTS,
) -> dict[str, Any]:
    """Every step can fail while SeaweedFS is away; the caller retries the whole, which is idempotent. Only the
    frames of segments not yet encoded are downloaded: a retry after the frames expired still finds the rest."""
    plans = plan_segments(clip, fps)
    ready = {plan.key: segment for plan in plans if (segment := segments.get(plan.key)) is not None}
    urls = list(dict.fromkeys(ref.url for plan in plans if plan.key not in ready for ref in plan.refs))
    blobs = await asyncio.gather(*(storage.download(url) for url in urls))
    jpegs = dict(zip(urls, blobs, strict=True))
    # The key frame is usually among the clip's: downloaded once.
    key_jpeg = jpegs.get(event.best_frame_url) or await storage.download(event.best_frame_url)
    clip_path, key_path, boxes_path = proof_paths(tmp_path, event.id)

    def render() -> bytes:
        # A 2-minute clip holds its JPEGs (tens of MB), never its 1,200 decoded frames (1.6 GB at 768x576).
        kept = cut_clip(plans, ready, jpegs, segments, clip_path, fps, event.best_frame_url)
        key_path.write_bytes(key_jpeg)
        key = kept.get(event.best_frame_url)
        boxes = encode_jpeg(draw_detections(decode_jpeg(key_jpeg) if key is None else key, event.best_detections), 90)
        boxes_path.write_bytes(boxes)
        return boxes

    boxes_jpeg = await asyncio.get_running_loop().run_in_executor(_RENDER_THREAD, render)
    remote = remote_folder(event.id)
    clip_bytes = clip_path.read_bytes()
    clip_url = await storage.put_path(f"{remote}/{clip_path.name}", clip_bytes, content_type="video/mp4")
    key_url = await storage.put_path(f"{remote}/{key_path.name}", key_jpeg, content_type="image/jpeg")
    boxes_url = await storage.put_path(f"{remote}/{boxes_path.name}", boxes_jpeg, content_type="image/jpeg")
    return {
        "clip_frames": len(clip),
        "video_proofs": clip_url,
        "video_proof_path": str(clip_path),
        "image_proofs": key_url,
        "image_proof_path": str(key_path),
        "image_annotated_proofs": boxes_url,
        "stored_bytes": len(clip_bytes) + len(key_jpeg) + len(boxes_jpeg),  # the disk budget's share (retention.py)
        "error": None,
    }
