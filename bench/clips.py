"""Proof-clip encoding: CPU ms per frame, wall ms per frame and MB per clip for a few x264 settings, on the
sample video's frames as the registrator gets them (JPEGs at the reader's quality, decoded once each); then
overlapping events of one source, each clip encoded whole (before) against clips cut from shared segments.

The clip is always H.264 in MP4 at 10 fps in yuv420p (every browser plays it); what varies is x264's preset,
threads and tune, and who makes the yuv420p (PyAV's swscale from bgr24, or cv2's BGR2YUV_I420). PSNR (luma,
against the frames encoded) shows what a faster preset costs in picture. CPU is the process's, x264's threads
included: what the registrator pays on a shared machine.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np

from bench.common import ROOT, median, print_table, write_result
from services.reader.settings import ReaderSettings
from services.registrator.clips import CLIP_ENCODING, ClipEncoding, plan_clip, segment_span, write_clip
from services.registrator.proofs import cut_clip, decoded_once
from services.registrator.segments import SegmentCache, plan_segments
from shared.contracts import FrameRef
from shared.jpeg import decode_jpeg, encode_jpeg

VIDEO = ROOT / "video" / "vtest.mp4"
JPEG_QUALITY = ReaderSettings.model_fields["jpeg_quality"].default
SETTINGS = [
    ClipEncoding(preset="veryfast", crf=26, cv2_convert=False),  # the settings before this benchmark
    ClipEncoding(preset="veryfast", crf=26),
    ClipEncoding(preset="veryfast", crf=26, threads=1),
    ClipEncoding(preset="veryfast", crf=26, tune="zerolatency"),
    ClipEncoding(preset="superfast", crf=26),
    ClipEncoding(preset="superfast", crf=29),
    ClipEncoding(preset="superfast", crf=29, threads=1),
    ClipEncoding(preset="ultrafast", crf=26),
    ClipEncoding(preset="ultrafast", crf=31),
    ClipEncoding(preset="ultrafast", crf=31, threads=1),
    ClipEncoding(preset="faster", crf=26),
]


def sample_frames(count: int) -> list[np.ndarray]:
    """The first `count` frames, through a JPEG at the reader's quality, as the registrator decodes them."""
    cap = cv2.VideoCapture(str(VIDEO))
    frames: list[np.ndarray] = []
    while len(frames) < count and (got := cap.read())[0]:
        frames.append(decode_jpeg(encode_jpeg(got[1], JPEG_QUALITY)))
    cap.release()
    return frames


def psnr_y(path: Path, frames: list[np.ndarray]) -> float:
    with av.open(str(path)) as container:
        decoded = [f.to_ndarray(format="gray") for f in container.decode(container.streams.video[0])]
    sources = [cv2.cvtColor(f, cv2.COLOR_BGR2GRAY).astype(np.float64) for f in frames]
    mse = float(np.mean([np.mean((d.astype(np.float64) - s) ** 2) for d, s in zip(decoded, sources, strict=True)]))
    return 10 * np.log10(255**2 / mse) if mse else float("inf")


def label(encoding: ClipEncoding) -> str:
    parts = [encoding.preset, f"crf {encoding.crf}", f"threads {encoding.threads or 'auto'}"]
    parts += [f"tune {encoding.tune}"] if encoding.tune else []
    parts += ["cv2 I420" if encoding.cv2_convert else "swscale bgr24"]
    return ", ".join(parts)


def measure(encoding: ClipEncoding, frames: list[np.ndarray], folder: Path) -> dict[str, Any]:
    path = folder / "clip.mp4"
    cpu0, t0 = time.process_time(), time.perf_counter()
    write_clip(frames, path, 10, encoding)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
    return {
        "cpu_ms_per_frame": 1000 * cpu / len(frames),
        "wall_ms_per_frame": 1000 * wall / len(frames),
        "mb_per_clip": path.stat().st_size / 2**20,
        "psnr_y_db": psnr_y(path, frames),
    }


def settings_case(repeats: int, count: int) -> None:
    frames = sample_frames(count)
    runs: dict[str, list[dict[str, Any]]] = {label(e): [] for e in SETTINGS}
    with tempfile.TemporaryDirectory(prefix="vigil-clips-") as tmp:
        write_clip(frames[:10], Path(tmp) / "warm.mp4", 10)  # x264 and swscale load once, outside the timing
        for _ in range(repeats):
            for encoding in SETTINGS:  # settings alternate so that the machine's noise hits each alike
                runs[label(encoding)].append(measure(encoding, frames, Path(tmp)))
    keys = ("cpu_ms_per_frame", "wall_ms_per_frame", "mb_per_clip", "psnr_y_db")
    medians = {name: {k: median([r[k] for r in got]) for k in keys} for name, got in runs.items()}
    chosen = label(CLIP_ENCODING)
    print_table(
        f"proof clip of {len(frames)} frames ({frames[0].shape[1]}x{frames[0].shape[0]}, 10 fps, H.264 yuv420p MP4); "
        f"medians of {repeats}; * = CLIP_ENCODING",
        ["settings", "CPU ms/frame", "wall ms/frame", "MB per clip", "PSNR-Y dB"],
        [[("* " if n == chosen else "  ") + n, *(m[k] for k in keys)] for n, m in medians.items()],
    )
    write_result(
        "clips",
        {"frames": len(frames), "repeats": repeats, "chosen": chosen, "median": medians, "runs": runs},
    )


# Overlapping events of one source, as object mode makes them: one event per tracked object, a new one every
# EVENT_EVERY seconds, each EVENT_SECONDS long, with the default pre- and post-roll.
EVENTS, EVENT_EVERY, EVENT_SECONDS, ROLL, CLIP_FPS = 8, 1.5, 8.0, 2.0, 10


def event_windows() -> list[tuple[float, float]]:
    return [(max(0.0, i * EVENT_EVERY - ROLL), i * EVENT_EVERY + EVENT_SECONDS + ROLL) for i in range(EVENTS)]


def overlap_source(source_fps: int) -> tuple[list[FrameRef], dict[str, bytes]]:
    """The sample video's frames as one source read at `source_fps`, long enough for every event's window."""
    seconds = max(end for _, end in event_windows()) + 1.0
    count = math.ceil(seconds * source_fps) + 1
    frames = sample_frames(count)
    height, width = frames[0].shape[:2]
    refs = [
        FrameRef(source_id="bench", seq=i, pts=i / source_fps, wall_time=0, url=f"frame/{i}", width=width, height=height)
        for i in range(len(frames))
    ]
    return refs, {r.url: encode_jpeg(f, JPEG_QUALITY) for r, f in zip(refs, frames, strict=True)}


def whole_clips(refs: list[FrameRef], jpegs: dict[str, bytes], folder: Path) -> dict[str, float]:
    """Before: every event decodes and encodes all the ticks of its window."""
    ticks, size = 0, 0
    for i, (start, end) in enumerate(event_windows()):
        chosen = plan_clip(refs, start, end, CLIP_FPS).refs
        write_clip(decoded_once(chosen, jpegs, "", {}), folder / f"whole{i}.mp4", CLIP_FPS)
        ticks, size = ticks + len(chosen), size + (folder / f"whole{i}.mp4").stat().st_size
    return {"encoded_ticks": ticks, "mb_clips": size / 2**20}


def segment_clips(refs: list[FrameRef], jpegs: dict[str, bytes], folder: Path) -> dict[str, float]:
    """After: each segment of the source is encoded once; every clip is a copy of the segments covering it."""
    cache, size = SegmentCache(2**30, 3600.0), 0
    for i, (start, end) in enumerate(event_windows()):
        lo, hi = segment_span(start, end, CLIP_FPS)
        hi = min(hi, refs[-1].pts)
        cut_clip(plan_segments(plan_clip(refs, lo, hi, CLIP_FPS), CLIP_FPS), {}, jpegs, cache, folder / f"seg{i}.mp4", CLIP_FPS)
        size += (folder / f"seg{i}.mp4").stat().st_size
    return {"encoded_ticks": cache.encoded_frames, "mb_clips": size / 2**20}


def timed(run: Any, refs: list[FrameRef], jpegs: dict[str, bytes], folder: Path, frames: int) -> dict[str, float]:
    cpu0, t0 = time.process_time(), time.perf_counter()
    got: dict[str, float] = run(refs, jpegs, folder)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
    return got | {"cpu_ms_per_source_frame": 1000 * cpu / frames, "wall_s": wall}


def overlap_case(repeats: int) -> None:
    ways = {"each clip encoded whole (before)": whole_clips, "clips cut from shared segments": segment_clips}
    runs: dict[str, dict[str, list[dict[str, float]]]] = {}
    rows = []
    for source_fps in (10, 2):
        refs, jpegs = overlap_source(source_fps)
        covered = {r.seq for start, end in event_windows() for r in refs if start <= r.pts <= end}
        runs[f"{source_fps} fps"] = {name: [] for name in ways}
        with tempfile.TemporaryDirectory(prefix="vigil-clips-") as tmp:
            for _ in range(repeats):
                for name, way in ways.items():  # alternating, so that the machine's noise hits both alike
                    runs[f"{source_fps} fps"][name].append(timed(way, refs, jpegs, Path(tmp), len(covered)))
        for name in ways:
            got = runs[f"{source_fps} fps"][name]
            rows.append(
                [f"{source_fps} fps, {name}", len(covered)]
                + [median([g[k] for g in got]) for k in ("cpu_ms_per_source_frame", "encoded_ticks", "mb_clips", "wall_s")]
            )
    print_table(
        f"{EVENTS} events of one source, one every {EVENT_EVERY} s, {EVENT_SECONDS} s each with {ROLL} s of pre- and "
        f"post-roll; clips at {CLIP_FPS} fps; medians of {repeats}; CPU per source frame in the events' windows",
        ["case", "source frames", "CPU ms/source frame", "ticks encoded", "MB of clips", "wall s"],
        rows,
    )
    medians = {
        rate: {name: {k: median([g[k] for g in got]) for k in got[0]} for name, got in by_way.items()}
        for rate, by_way in runs.items()
    }
    write_result(
        "clips_overlap",
        {
            "events": EVENTS,
            "event_every_s": EVENT_EVERY,
            "event_seconds": EVENT_SECONDS,
            "roll_s": ROLL,
            "repeats": repeats,
            "median": medians,
            "runs": runs,
        },
    )


def main(repeats: int, count: int, case: str) -> None:
    if case in ("all", "settings"):
        settings_case(repeats, count)
    if case in ("all", "overlap"):
        overlap_case(repeats)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.clips", description=__doc__.splitlines()[0])
    parser.add_argument("repeats", nargs="?", type=int, default=3, help="runs of every setting (medians are reported)")
    parser.add_argument("--frames", type=int, default=100, help="frames per clip (100: a 10 s clip)")
    parser.add_argument("--case", choices=("all", "settings", "overlap"), default="all", help="which measure to run")
    args = parser.parse_args()
    main(args.repeats, args.frames, args.case)
