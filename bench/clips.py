"""Proof-clip encoding: CPU ms per frame, wall ms per frame and MB per clip for a few x264 settings, on the
sample video's frames as the registrator gets them (JPEGs at the reader's quality, decoded once each).

The clip is always H.264 in MP4 at 10 fps in yuv420p (every browser plays it); what varies is x264's preset,
threads and tune, and who makes the yuv420p (PyAV's swscale from bgr24, or cv2's BGR2YUV_I420). PSNR (luma,
against the frames encoded) shows what a faster preset costs in picture. CPU is the process's, x264's threads
included: what the registrator pays on a shared machine.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np

from bench.common import ROOT, median, print_table, write_result
from services.reader.settings import ReaderSettings
from services.registrator.clips import CLIP_ENCODING, ClipEncoding, write_clip
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


def main(repeats: int, count: int) -> None:
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


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.clips", description=__doc__.splitlines()[0])
    parser.add_argument("repeats", nargs="?", type=int, default=3, help="runs of every setting (medians are reported)")
    parser.add_argument("--frames", type=int, default=100, help="frames per clip (100: a 10 s clip)")
    args = parser.parse_args()
    main(args.repeats, args.frames)
