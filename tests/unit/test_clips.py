from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from services.registrator import proofs
from services.registrator.clips import ClipEncoding, draw_detections, plan_clip, segment_span, write_clip
from services.registrator.frames import FrameRing
from shared.contracts import BBox, Detection, FrameRef
from shared.jpeg import encode_jpeg


def ref(seq: int, pts: float, source: str = "cam0") -> FrameRef:
    return FrameRef(source_id=source, seq=seq, pts=pts, wall_time=0, url=f"http://h/{seq}", width=8, height=8)


def test_ticks_lie_on_the_source_grid_and_cover_both_ends() -> None:
    clip = plan_clip([ref(0, 0.0)], 1.0, 3.0, 10)
    assert clip.first_tick == 10 and len(clip) == 21
    clip = plan_clip([ref(0, 0.0)], 1.04, 1.26, 10)  # between ticks: the grid's ticks inside the window
    assert clip.first_tick == 11 and len(clip) == 2


def test_a_clip_without_frames_says_why() -> None:
    with pytest.raises(ValueError, match=r"no frame of the source is buffered at or before 3\.0 s"):
        plan_clip([], 1.0, 3.0, 10)


def test_windows_widen_to_whole_segments_of_the_source_clock() -> None:
    assert segment_span(2.35, 5.2, 10) == (2.0, 5.9)
    assert segment_span(4.0, 5.0, 10) == (4.0, 5.9)  # a window on a boundary starts there
    assert segment_span(0.0, 0.0, 10) == (0.0, 1.9)
    start, end = segment_span(7.77, 8.01, 25)
    assert (start, round(end * 25)) == (6.0, 249)


def test_sparse_frames_fill_every_tick_with_the_latest_before_it() -> None:
    refs = [ref(0, 0.0), ref(5, 0.5), ref(10, 1.0)]  # a source read at 2 fps
    chosen = plan_clip(refs, 0.0, 1.0, 10).refs
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


@pytest.mark.parametrize("cv2_convert", [True, False], ids=["cv2 I420", "swscale"])
def test_clip_keeps_the_colours_and_a_frame_given_again(tmp_path: Path, cv2_convert: bool) -> None:
    # Blue, green, red and grey, each shown for several ticks by passing the same array again (as the proofs do
    # for a source slower than the clip): every tick is a frame, in order, with its colour (BT.601, as players read).
    colours = [(200, 40, 40), (40, 200, 40), (40, 40, 200), (128, 128, 128)]
    arrays = [np.full((96, 128, 3), c, np.uint8) for c in colours]
    path = tmp_path / "clip.mp4"
    write_clip([a for a in arrays for _ in range(3)], path, 10, ClipEncoding(cv2_convert=cv2_convert))
    with av.open(str(path)) as container:
        frames = [f.to_ndarray(format="bgr24") for f in container.decode(container.streams.video[0])]
    assert len(frames) == 12
    for i, frame in enumerate(frames):
        assert np.abs(frame.astype(int) - colours[i // 3]).mean(axis=(0, 1)).max() < 8, f"frame {i}"


def test_each_stored_frame_is_decoded_once(monkeypatch: pytest.MonkeyPatch) -> None:
    decoded: list[int] = []

    def counting_decode(data: bytes) -> np.ndarray:
        decoded.append(len(data))
        return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)

    monkeypatch.setattr(proofs, "decode_jpeg", counting_decode)
    refs = [ref(0, 0.0), ref(5, 0.5), ref(10, 1.0)]  # read at 2 fps, a clip at 10 fps: 11 ticks, 3 frames
    jpegs = {r.url: encode_jpeg(np.full((16, 16, 3), r.seq * 20, np.uint8)) for r in refs}
    chosen = plan_clip(refs, 0.0, 1.0, 10).refs
    kept: dict[str, np.ndarray] = {}
    images = list(proofs.decoded_once(chosen, jpegs, refs[1].url, kept))
    assert len(images) == 11 and len(decoded) == 3
    assert images[0] is images[4] and images[5] is images[9] and images[4] is not images[5]
    assert kept[refs[1].url] is images[5]  # the key frame comes from the clip's decode
