"""Tracking on the sample video, offline: the real detector, ByteTrack, and per-object events with the defaults.

Decodes video/vtest.mp4 with cv2, runs the SSD in-process through the worker's own model class (no fleet),
then feeds the results to `ObjectEventTracker` built from the registrator's default settings, in stream order
and again out of order with redeliveries (as replicas deliver them), and prints a table: tracks, confirmed
person events, their lengths, and how the confirmation rule moves the count. With --frames DIR it also saves
a few frames with the tracks' ids drawn, to count people by eye.

    python -m bench.tracking [--frames DIR] [--every N]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from bench.common import ROOT, print_table, write_result
from services.registrator.objects import ObjectEventTracker, ObjectRules
from services.registrator.settings import RegistratorSettings
from services.worker.onnx_model import load_model
from shared.contracts import Detection, FrameRef, InferenceResult, ModelKind

VIDEO = ROOT / "video" / "vtest.mp4"
MODEL = ROOT / "models" / "ssd_mobilenet_v2_coco"
KEY_FRAMES = (0, 150, 300, 450, 600, 750)


def detect(every: int) -> tuple[list[InferenceResult], list[np.ndarray], float, float]:
    """Results of every `every`-th frame, the key frames' images, the source's fps and the detector's ms/frame."""
    model = load_model(MODEL, intra_op_threads=2)
    cap = cv2.VideoCapture(str(VIDEO))
    fps = cap.get(cv2.CAP_PROP_FPS) or 10.0
    results, keys, seq, spent = [], [], 0, 0.0
    while True:
        ok, image = cap.read()
        if not ok:
            break
        if seq % every == 0:
            started = time.perf_counter()
            dets = model.infer([image])[0]
            spent += time.perf_counter() - started
            height, width = image.shape[:2]
            frame = FrameRef(
                source_id="vtest", seq=seq, pts=seq / fps, wall_time=seq / fps, url=f"bench://{seq}", width=width, height=height
            )
            detections = [d for d in dets if isinstance(d, Detection)]
            kind = ModelKind.DETECTION
            results.append(
                InferenceResult(frame=frame, model=MODEL.name, kind=kind, instance="bench", detections=detections, finished_at=0)
            )
        if seq in KEY_FRAMES:
            keys.append(image)
        seq += 1
    cap.release()
    return results, keys, fps, 1000 * spent / max(1, len(results))


def track(results: list[InferenceResult], settings: RegistratorSettings) -> dict[str, Any]:
    tracker = ObjectEventTracker(ObjectRules.from_settings(settings))
    events: dict[str, Any] = {}
    started = time.perf_counter()
    for res in results:
        changed, closed = tracker.observe(res)
        for event in changed + closed:
            events[event.id] = event
    issued = sum(t.ids_issued for t in tracker.trackers.values())
    for event in tracker.close_source(results[0].frame.feed):
        events[event.id] = event
    seconds = time.perf_counter() - started
    people = [e for e in events.values() if e.record().label == "person"]
    lengths = [e.end - e.start for e in people]
    return {
        "events": len(people),
        "tracks": issued,
        "stationary": sum(1 for e in people if e.stationary),
        "median_s": round(statistics.median(lengths), 1) if lengths else 0.0,
        "longest_s": round(max(lengths), 1) if lengths else 0.0,
        "stitches": tracker.stitches,
        "late": tracker.late,
        "duplicates": tracker.duplicates,
        "ms_per_frame": round(1000 * seconds / len(results), 2),
        "records": sorted(
            ((e.track_id, round(e.start, 1), round(e.end, 1), e.frames, e.best_frame_seq) for e in people), key=lambda r: r[1]
        ),
    }


def shuffled(results: list[InferenceResult], seed: int = 1) -> list[InferenceResult]:
    """Out of order within 4 frames, a fifth delivered twice: what two or three replicas do."""
    rng = random.Random(seed)
    out: list[InferenceResult] = []
    for start in range(0, len(results), 4):
        chunk = results[start : start + 4]
        rng.shuffle(chunk)
        out += chunk
    return [r for res in out for r in ([res, res] if rng.random() < 0.2 else [res])]


def draw_tracks(results: list[InferenceResult], keys: list[np.ndarray], out: Path) -> None:
    """Key frames with each person box and its track id, as ByteTrack gives them (in order, no reorder delay)."""
    settings = RegistratorSettings(track_reorder_depth=0)
    tracker = ObjectEventTracker(ObjectRules.from_settings(settings))
    wanted = {seq: image for seq, image in zip(KEY_FRAMES, keys, strict=False)}
    out.mkdir(parents=True, exist_ok=True)
    for res in results:
        tracker.observe(res)
        seq = res.frame.seq
        if seq not in wanted:
            continue
        image = wanted[seq].copy()
        recent = tracker._recent[(res.frame.feed, res.model)][-1]
        for track_id, box in recent[1]:
            x1, y1, x2, y2 = box.to_pixels(image.shape[1], image.shape[0])
            cv2.rectangle(image, (x1, y1), (x2, y2), (0, 255, 0), 2)
            cv2.putText(image, str(track_id), (x1, max(12, y1 - 4)), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 255), 2)
        seen = len(res.detections)
        cv2.putText(image, f"seq {seq}: {seen} det", (8, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 0), 2)
        cv2.imwrite(str(out / f"frame_{seq:04d}.jpg"), image)
    print(f"key frames with track ids written under {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=Path, help="save key frames with track ids here")
    parser.add_argument("--every", type=int, default=1, help="detect every N-th frame (the router's every_nth)")
    args = parser.parse_args()
    results, keys, fps, detect_ms = detect(args.every)
    people = sum(1 for r in results for d in r.detections if d.label == "person")
    print(f"{len(results)} frames at {fps:g} fps / {args.every}, {people} person detections, detector {detect_ms:.1f} ms/frame")

    defaults = RegistratorSettings()
    cases: list[tuple[str, RegistratorSettings, bool]] = [
        ("defaults, in order", defaults, False),
        ("defaults, shuffled + redelivered", defaults, True),
        ("min_frames 1", RegistratorSettings(object_min_frames=1), False),
        ("min_frames 10", RegistratorSettings(object_min_frames=10), False),
        ("track_lost_seconds 5", RegistratorSettings(track_lost_seconds=5.0), False),
        ("no stitching", RegistratorSettings(track_stitch_heights=0.0), False),
        ("ByteTrack's own thresholds", RegistratorSettings(track_activation_score=0.25, track_match_threshold=0.8), False),
    ]
    rows, doc = [], {}
    for name, settings, shuffle in cases:
        figures = track(shuffled(results) if shuffle else results, settings)
        doc[name] = figures
        columns = ("events", "tracks", "stitches", "stationary", "median_s", "longest_s", "late", "duplicates", "ms_per_frame")
        rows.append([name, *(figures[c] for c in columns)])
    print_table(
        "Person events on video/vtest.mp4 (event_mode=object)",
        ["case", "events", "tracks", "stitched", "stationary", "median s", "longest s", "late", "dup", "ms/frame"],
        rows,
    )
    same = doc["defaults, in order"]["records"] == doc["defaults, shuffled + redelivered"]["records"]
    print(f"\nshuffled delivery gives the same events as in-order delivery: {same}")
    write_result(
        "tracking",
        {
            "video": VIDEO.name,
            "frames": len(results),
            "every": args.every,
            "person_detections": people,
            "detector_ms_per_frame": round(detect_ms, 1),
            "shuffled_same_as_in_order": same,
            "cases": doc,
        },
    )
    if args.frames:
        draw_tracks(results, keys, args.frames)


if __name__ == "__main__":
    main()
