"""Small media files built in tests: several video streams, HLS playlists, truncated files."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np


def two_stream_video(path: Path, frames: int = 10) -> None:
    """An MP4 whose two video streams differ in size, so the stream a reader picked is visible."""
    with av.open(str(path), "w") as out:
        streams = []
        for width, height in ((64, 48), (32, 24)):
            stream = out.add_stream("libx264", rate=Fraction(10, 1))
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            streams.append(stream)
        for i in range(frames):
            for stream in streams:
                image = np.full((stream.height, stream.width, 3), i * 20 % 255, np.uint8)
                for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="bgr24")):
                    out.mux(packet)
        for stream in streams:
            for packet in stream.encode():
                out.mux(packet)


def hls_from(video: Path, folder: Path, seconds_per_segment: int = 4) -> Path:
    """Remux an H.264 MP4 into an HLS VOD playlist (no re-encoding); returns the playlist path."""
    folder.mkdir(parents=True, exist_ok=True)
    playlist = folder / "index.m3u8"
    with (
        av.open(str(video)) as src,
        av.open(
            str(playlist),
            "w",
            format="hls",
            options={
                "hls_time": str(seconds_per_segment),
                "hls_playlist_type": "vod",
                "hls_segment_filename": str(folder / "seg%03d.ts"),
            },
        ) as out,
    ):
        in_stream = src.streams.video[0]
        out_stream = out.add_stream_from_template(in_stream)
        for packet in src.demux(in_stream):
            if packet.dts is None:
                continue
            packet.stream = out_stream
            out.mux(packet)
    return playlist


def truncated_copy(video: Path, path: Path, fraction: float) -> Path:
    data = video.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    return path


def first_seconds(video: Path, path: Path, seconds: float) -> Path:
    """The first `seconds` of an MP4, remuxed (no re-encoding): a shorter run of the same footage."""
    with av.open(str(video)) as src, av.open(str(path), "w") as out:
        in_stream = src.streams.video[0]
        out_stream = out.add_stream_from_template(in_stream)
        assert in_stream.time_base is not None
        for packet in src.demux(in_stream):
            if packet.dts is None:
                continue
            if packet.pts is not None and packet.pts * in_stream.time_base >= seconds:
                break
            packet.stream = out_stream
            out.mux(packet)
    return path
