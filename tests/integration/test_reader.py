import asyncio
from pathlib import Path

import pytest

from services.reader.service import ReaderService
from services.reader.settings import ReaderSettings
from shared.bus import fetch
from shared.contracts import FrameRef, SourceState, SourceStatus
from shared.subjects import frames_stream
from tests.support.settings import settings_from


async def read_stream(reader: ReaderService) -> tuple[list[FrameRef], list[SourceStatus]]:
    """Everything the reader put on the frames stream, in order."""
    await reader.bus.connect()
    try:
        sub = await reader.bus.durable_pull(frames_stream(reader.settings).name, "inspect")
        frames, statuses = [], []
        while msgs := await fetch(sub, 500, timeout=1):
            for msg in msgs:
                if reader.bus.subjects.is_source_status(msg.subject):
                    statuses.append(SourceStatus.from_bytes(msg.data))
                else:
                    frames.append(FrameRef.from_bytes(msg.data))
        return frames, statuses
    finally:
        await reader.bus.close()


@pytest.mark.parametrize("reader_type", ["av", "opencv"])
async def test_reader_publishes_every_kept_frame_then_ended(
    service_env: dict[str, str], repo_root: Path, reader_type: str
) -> None:
    env = service_env | {
        "video_source": str(repo_root / "video" / "vtest.mp4"),
        "reader_type": reader_type,
        "video_skip_frames": "4",
        "max_width": "384",
    }
    reader = ReaderService(settings_from(ReaderSettings, env))
    await reader.execute()  # a file source ends by itself
    frames, statuses = await read_stream(reader)
    assert len(frames) == 159  # 795 frames, one in five kept
    assert [f.seq for f in frames] == list(range(159))  # seq counts the frames taken: a gap is a loss
    assert frames[1].pts == pytest.approx(0.5, abs=0.011)
    assert (frames[0].width, frames[0].height) == (384, 288)
    assert all(f.policy.value == "WAIT" for f in frames)
    assert [s.state for s in statuses] == [SourceState.STARTED, SourceState.ENDED]
    end = statuses[-1]
    assert (end.frames_read, end.frames_published, end.frames_dropped, end.last_seq) == (159, 159, 0, 158)


async def test_missing_file_fails_clearly_and_says_so_on_the_bus(service_env: dict[str, str], tmp_path: Path) -> None:
    env = service_env | {"video_source": str(tmp_path / "missing.mp4")}
    reader = ReaderService(settings_from(ReaderSettings, env))
    await reader.execute()
    assert reader.exit_code == 0  # FAILED, but a restart (compose's on-failure) would only replay a file: no retry
    frames, statuses = await read_stream(reader)
    assert frames == [] and [s.state for s in statuses] == [SourceState.STARTED, SourceState.FAILED]
    assert "video file not found" in (statuses[-1].error or "") and "missing.mp4" in (statuses[-1].error or "")


async def test_a_live_source_that_gives_up_exits_1_for_a_restart(service_env: dict[str, str]) -> None:
    env = service_env | {
        "video_source": "rtsp://127.0.0.1:9/none",
        "max_reconnects": "1",
        "reconnect_initial": "0.2",
        "reconnect_max": "0.5",
        "open_timeout": "2",
    }
    reader = ReaderService(settings_from(ReaderSettings, env))
    await asyncio.wait_for(reader.execute(), 60)
    assert reader.exit_code == 1  # a camera may be back: the restart policy should try again
    _, statuses = await read_stream(reader)
    assert [s.state for s in statuses] == [SourceState.STARTED, SourceState.FAILED]
