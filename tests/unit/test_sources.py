from pathlib import Path

import pytest

from services.reader.settings import SourceConfig
from services.reader.sources import SourceError, is_live, open_source

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = str(ROOT / "video" / "vtest.mp4")


@pytest.mark.parametrize("reader_type", ["av", "opencv"])
def test_both_backends_read_the_sample(reader_type: str) -> None:
    source = open_source(SourceConfig(source_id="s", url=SAMPLE, reader_type=reader_type))  # type: ignore[arg-type]
    try:
        assert source.fps == pytest.approx(10.0)
        frames = []
        for frame in source.frames():
            frames.append(frame)
            if len(frames) == 12:
                break
    finally:
        source.close()
    assert frames[0].bgr().shape == (576, 768, 3)
    assert [f.index for f in frames] == list(range(12))
    assert frames[11].pts == pytest.approx(1.1, abs=0.011)


@pytest.mark.parametrize("reader_type", ["av", "opencv"])
def test_missing_file_is_a_clear_error(reader_type: str, tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="not found"):
        open_source(SourceConfig(source_id="s", url=str(tmp_path / "nope.mp4"), reader_type=reader_type))  # type: ignore[arg-type]


def test_a_file_that_is_not_video_is_a_clear_error(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.mp4"
    bogus.write_bytes(b"this is not a video" * 100)
    with pytest.raises(SourceError, match="cannot open"):
        open_source(SourceConfig(source_id="s", url=str(bogus)))


def test_missing_stream_index_is_a_clear_error() -> None:
    with pytest.raises(SourceError, match="stream index 3"):
        open_source(SourceConfig(source_id="s", url=SAMPLE, stream_index=3))


def test_truncated_file_yields_what_decodes(tmp_path: Path) -> None:
    data = Path(SAMPLE).read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 3])  # faststart: the index survives, the tail is gone
    source = open_source(SourceConfig(source_id="s", url=str(cut)))
    count = 0
    try:
        for _ in source.frames():
            count += 1
    except SourceError as exc:
        assert "decoding" in str(exc)
    finally:
        source.close()
    assert 50 < count < 795


def test_live_detection_and_override() -> None:
    def live(url: str, **over: object) -> bool:
        return is_live(SourceConfig(source_id="s", url=url, **over))  # type: ignore[arg-type]

    assert live("rtsp://cam/stream") and live("0") and live("/dev/video2") and live("udp://239.0.0.1:5000")
    assert not live("video/vtest.mp4") and not live("http://host/clip.mp4")
    assert live("http://host/live.m3u8", live=True) and not live("rtsp://cam/replay", live=False)
