from __future__ import annotations

from typing import Literal

from pydantic import Field

from shared.settings import VigilSettings


class ReaderSettings(VigilSettings):
    service_name: str = "reader"

    video_source: str = "video/vtest.mp4"
    source_id: str = Field(default="cam0", pattern=r"^[A-Za-z0-9_-]{1,64}$")
    reader_type: Literal["av", "opencv"] = "av"
    video_skip_frames: int = Field(default=0, ge=0, description="frames skipped after each one taken")
    stream_index: int = Field(default=0, ge=0, description="which video stream of the container")
    video_realtime: bool = Field(default=False, description="pace a file at its own frame rate (live sources always are)")
    jpeg_quality: int = Field(default=85, ge=10, le=100)
    max_width: int = Field(default=0, ge=0, description="downscale wider frames before JPEG; 0 keeps the size")
    upload_concurrency: int = Field(default=8, ge=1, le=64)
    frames_ahead: int = Field(default=100, ge=1, description="WAIT mode: most frames published but not yet routed")
