from pathlib import Path

import pytest

from services.reader.sources import SourceError, is_live_url, open_source

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = str(ROOT / "video" / "vtest.mp4")


@pytest.mark.parametrize("reader_type", ["av", "opencv"])
def test_both_backends_read_the_sample(reader_type: str) -> None:
    source = open_source(SAMPLE, reader_type)  # type: ignore[arg-type]
    try:
        assert source.fps == pytest.approx(10.0) and not source.is_live
        frames = []
        for frame in source.frames():
            frames.append(frame)
            if len(frames) == 12:
                break
    finally:
        source.close()
    assert frames[0].image.shape == (576, 768, 3)
    assert [f.index for f in frames] == list(range(12))
    assert frames[11].pts == pytest.approx(1.1, abs=0.011)


@pytest.mark.parametrize("reader_type", ["av", "opencv"])
def test_missing_file_is_a_clear_error(reader_type: str, tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="not found"):
        open_source(str(tmp_path / "nope.mp4"), reader_type)  # type: ignore[arg-type]


def test_a_file_that_is_not_video_is_a_clear_error(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.mp4"
    bogus.write_bytes(b"this is not a video" * 100)
    with pytest.raises(SourceError, match="cannot open"):
        open_source(str(bogus), "av")


def test_missing_stream_index_is_a_clear_error() -> None:
    with pytest.raises(SourceError, match="stream index 3"):
        open_source(SAMPLE, "av", stream_index=3)


def test_truncated_file_yields_what_decodes(tmp_path: Path) -> None:
    data = Path(SAMPLE).read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 3])  # faststart: the index survives, the tail is gone
    source = open_source(str(cut), "av")
    count = 0
    try:
        for _ in source.frames():
            count += 1
    except SourceError as exc:
        assert "decoding" in str(exc)
    finally:
        source.close()
    assert 50 < count < 795


def test_live_url_detection() -> None:
    assert is_live_url("rtsp://cam/stream") and is_live_url("0")
    assert not is_live_url("video/vtest.mp4") and not is_live_url("http://host/clip.mp4")
