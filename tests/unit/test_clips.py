from pathlib import Path

import av
import numpy as np

from services.registrator.clips import clip_ticks, draw_detections, pick_frames, write_clip
from services.registrator.frames import FrameRing
from shared.contracts import BBox, Detection, FrameRef


def ref(seq: int, pts: float, source: str = "cam0") -> FrameRef:
    return FrameRef(source_id=source, seq=seq, pts=pts, wall_time=0, url=f"http://h/{seq}", width=8, height=8)


def test_ticks_cover_both_ends_at_the_rate() -> None:
    ticks = clip_ticks(1.0, 3.0, 10)
    assert len(ticks) == 21 and ticks[0] == 1.0 and abs(ticks[-1] - 3.0) < 1e-9


def test_sparse_frames_fill_every_tick_with_the_latest_before_it() -> None:
    refs = [ref(0, 0.0), ref(5, 0.5), ref(10, 1.0)]  # a source read at 2 fps
    chosen = pick_frames(refs, clip_ticks(0.0, 1.0, 10))
    assert [r.seq for r in chosen] == [0] * 5 + [5] * 5 + [10]


def test_ring_keeps_order_drops_duplicates_prunes_and_caps() -> None:
    ring = FrameRing(max_frames_per_source=5)
    for seq in (2, 0, 1, 1, 3):
        ring.add(ref(seq, seq / 10))
    assert [r.seq for r in ring.window("cam0", 0.0, 1.0)] == [0, 1, 2, 3]
    ring.prune_before("cam0", 0.15)
    assert [r.seq for r in ring.window("cam0", 0.0, 1.0)] == [2, 3]
    for seq in range(4, 10):
        ring.add(ref(seq, seq / 10))
    assert len(ring) == 5 and ring.dropped == 3  # 2 kept + 6 added, capped at 5
    assert [r.seq for r in ring.window("cam0", 0.0, 1.0)] == [5, 6, 7, 8, 9]
    assert ring.latest_pts("cam0") == 0.9 and ring.latest_pts("other") is None


def test_clip_is_h264_at_the_rate_with_every_frame(tmp_path: Path) -> None:
    images = [np.full((101, 131, 3), i * 10, np.uint8) for i in range(23)]  # odd sizes: cropped to even
    path = tmp_path / "clip.mp4"
    write_clip(images, path, 10)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert stream.average_rate == 10
        frames = list(container.decode(stream))
    assert len(frames) == 23
    assert (frames[0].width, frames[0].height) == (130, 100)
    # faststart: the index (moov) comes before the media data, so browsers play before downloading it all
    head = path.read_bytes()[:4096]
    assert head.find(b"moov") != -1 and (head.find(b"mdat") == -1 or head.find(b"moov") < head.find(b"mdat"))


def test_boxes_are_drawn_where_the_detection_is() -> None:
    image = np.zeros((100, 200, 3), np.uint8)
    det = Detection.on_image("person", 0, 0.9, BBox(x1=0.25, y1=0.2, x2=0.75, y2=0.8), 200, 100)
    out = draw_detections(image, [det])
    assert out[20, 50:150].any() and not out[50, 100].any()  # the edge is drawn, the inside is not filled
    assert not image.any()  # the original is left alone
