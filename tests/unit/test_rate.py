"""The one rate gate by stream time (reader target_fps, router max_fps)."""

from __future__ import annotations

from shared.rate import StreamRate


def taken(rate: StreamRate, fps: float, seconds: float) -> list[float]:
    return [pts for i in range(int(fps * seconds)) if rate.take(pts := i / fps)]


def test_a_25_fps_stream_gated_to_10_keeps_10_a_second_not_8() -> None:
    kept = taken(StreamRate(10), 25, 10)
    assert len(kept) == 100  # anchored to the schedule: 25/10 does not round down to every 3rd frame (8.33/s)


def test_no_limit_takes_everything() -> None:
    assert len(taken(StreamRate(0), 25, 2)) == 50


def test_a_gap_in_the_stream_does_not_release_a_burst() -> None:
    rate = StreamRate(2)
    assert [rate.take(p) for p in (0.0, 0.1, 0.5)] == [True, False, True]
    # After 60 s of nothing the schedule jumps to the stream, not 118 frames of catching up: at most one interval's slack.
    after = [p for p in (60 + i / 25 for i in range(50)) if rate.take(p)]
    assert 4 <= len(after) <= 6, after  # 2 s at 2 fps, plus the slack
