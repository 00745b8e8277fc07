from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from shared.contracts import SOURCE_ID_PATTERN
from shared.settings import VigilSettings
from shared.validation import describe_errors

ReaderType = Literal["av", "opencv"]


class SourceConfig(BaseModel):
    """One source and how to read it. A reader serves a list of these."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source_id: str = Field(pattern=SOURCE_ID_PATTERN)
    url: str = Field(min_length=1, description="file path, rtsp://, http(s)://, an HLS .m3u8, or a USB camera (0, /dev/video0)")
    reader_type: ReaderType = "av"
    skip_frames: int = Field(default=0, ge=0, description="frames skipped after each one taken")
    target_fps: float = Field(default=0.0, ge=0, description="most frames per second taken; 0 takes all")
    stream_index: int = Field(default=0, ge=0, description="which video stream of the container")
    max_width: int = Field(default=0, ge=0, description="downscale wider frames before JPEG; 0 keeps the size")
    jpeg_quality: int = Field(default=85, ge=10, le=100)
    loop: bool = Field(default=False, description="files: start again at the end (stream time keeps counting)")
    realtime: bool = Field(default=False, description="files: pace at the file's own frame rate")
    live: bool | None = Field(default=None, description="None decides from the URL: rtsp, rtmp, udp, srt and USB are live")
    rtsp_transport: Literal["tcp", "udp"] = "tcp"


class ReaderSettings(VigilSettings):
    service_name: str = "reader"

    # One source from the seed's keys...
    video_source: str = Field(
        default="video/vtest.mp4",
        description="a file, rtsp://, http(s):// (a file or an HLS .m3u8), or a USB camera (0, /dev/video0)",
    )
    source_id: str = Field(
        default="cam0", pattern=SOURCE_ID_PATTERN, description="unique per source: part of every frame id and event"
    )
    reader_type: ReaderType = Field(default="av", description="av (PyAV) or opencv")
    video_skip_frames: int = Field(default=0, ge=0, description="frames skipped after each one taken (0 = every frame)")
    stream_index: int = Field(default=0, ge=0, description="which video stream of the container")
    target_fps: float = Field(default=0.0, ge=0, description="most frames per second taken, by stream time (0 = all)")
    max_width: int = Field(default=0, ge=0, description="downscale wider frames before JPEG (0 = keep)")
    jpeg_quality: int = Field(default=85, ge=10, le=100, description="JPEG quality of the stored frames")
    video_loop: bool = Field(default=False, description="files: start again at the end (stream time keeps counting)")
    video_realtime: bool = Field(default=False, description="files: pace at the file's own frame rate (live sources always are)")
    video_live: bool | None = Field(
        default=None, description="unset = decided from the URL (rtsp, rtmp, udp, srt, USB are live); true/false forces it"
    )
    rtsp_transport: Literal["tcp", "udp"] = Field(default="tcp", description="RTSP over tcp or udp")
    # ...or many: a JSON list of SourceConfig objects, or a YAML file holding that list.
    sources: list[SourceConfig] = Field(
        default_factory=list, description="many sources: a JSON list of {source_id, url, ...} (see Sources above)"
    )
    sources_file: Path | None = Field(default=None, description="the same list in a YAML file; set one of sources / sources_file")

    upload_concurrency: int = Field(default=8, ge=1, le=64, description="per source: frames encoding or uploading at once")
    frames_ahead: int = Field(default=100, ge=1, description="files: most frames published but not yet routed")
    open_timeout: float = Field(default=10.0, gt=0, description="seconds to open a source")
    read_timeout: float = Field(default=5.0, gt=0, description="seconds a blocked read may wait inside the decoder")
    stall_timeout: float = Field(default=10.0, gt=0, description="seconds without a frame before a live source reconnects")
    reconnect_initial: float = Field(
        default=1.0, gt=0, description="first reconnect delay; doubles up to reconnect_max, with jitter"
    )
    reconnect_max: float = Field(default=30.0, gt=0, description="longest delay between reconnects (seconds)")
    max_reconnects: int = Field(default=0, ge=0, description="consecutive failed reconnects before a source fails; 0 = never")
    status_interval: float = Field(default=2.0, gt=0, description="seconds between source health reports")
    # The registrator's name and bounds (services/registrator/settings.py): LEASE_TTL sets both, READER_LEASE_TTL this one.
    lease_ttl: float = Field(
        default=6.0,
        ge=1.0,
        le=60.0,
        description="seconds a replica's hold on a source lasts unless renewed: a dead replica's sources move after this",
    )

    @model_validator(mode="after")
    def _one_way_to_name_sources(self) -> ReaderSettings:
        if self.sources and self.sources_file:
            raise ValueError("set either sources or sources_file, not both")
        return self

    def source_configs(self) -> list[SourceConfig]:
        if self.sources_file is not None:
            configs = load_sources_file(self.sources_file)
        elif self.sources:
            configs = list(self.sources)
        else:
            configs = [
                SourceConfig(
                    source_id=self.source_id,
                    url=self.video_source,
                    reader_type=self.reader_type,
                    skip_frames=self.video_skip_frames,
                    target_fps=self.target_fps,
                    stream_index=self.stream_index,
                    max_width=self.max_width,
                    jpeg_quality=self.jpeg_quality,
                    loop=self.video_loop,
                    realtime=self.video_realtime,
                    live=self.video_live,
                    rtsp_transport=self.rtsp_transport,
                )
            ]
        ids = [c.source_id for c in configs]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ValueError(f"source ids must be unique: {', '.join(duplicates)} repeated")
        return configs


def load_sources_file(path: Path) -> list[SourceConfig]:
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"cannot read sources_file {path}: {exc}") from None
    if isinstance(doc, dict):
        doc = doc.get("sources")
    if not isinstance(doc, list) or not doc:
        raise ValueError(f"sources_file {path} must hold a non-empty list of sources")
    configs = []
    for number, item in enumerate(doc, start=1):
        try:
            configs.append(SourceConfig.model_validate(item))
        except ValidationError as exc:
            raise ValueError(f"sources_file {path}, source {number}: {describe_errors(exc, limit=3)}") from None
    return configs
