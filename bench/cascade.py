"""The cascade's per-crop cost, offline: the worker's own decode, crop and model code on the vehicle clip.

Each frame of video/cars.mp4 is encoded to JPEG as the reader stores it; the SSD finds its cars; then, as the
classification worker does for a crop task, the JPEG is decoded (reduced only where every crop allows), the
square crops are cut and EfficientNet-Lite0 classifies them in one batch. Prints the CPU milliseconds per crop of
each stage, next to classifying the whole frame, and each car's crop classes (left and right car by box centre).
CPU time of this thread (onnxruntime runs on it with one thread), not wall time: the machine this was written
on is shared, and its wall times swing with the others' load.

    python -m bench.cascade
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import Counter
from functools import partial
from typing import Any

import av

from bench.common import ROOT, print_table, write_result
from services.worker.crops import cut, pixels_needed_for_crops
from services.worker.onnx_model import load_model
from shared.contracts import BBox, Classification, Detection
from shared.jpeg import decode_for, encode_jpeg

VIDEO = ROOT / "video" / "cars.mp4"
CARS = {"car", "truck", "bus"}


def run(threads: int) -> dict[str, Any]:
    detector = load_model(ROOT / "models" / "ssd_mobilenet_v2_coco", intra_op_threads=threads)
    classifier = load_model(ROOT / "models" / "efficientnet_lite0", intra_op_threads=threads)
    with av.open(str(VIDEO)) as container:
        jpegs = [encode_jpeg(frame.to_ndarray(format="bgr24")) for frame in container.decode(video=0)]
    classifier.infer([decode_for(jpegs[0], classifier.pixels_needed)[0]])  # the first run allocates: not timed
    stages: dict[str, list[float]] = {"decode": [], "cut+preprocess": [], "infer": [], "whole frame": []}
    crops_total = 0
    classes: dict[str, Counter[str]] = {"left car": Counter(), "right car": Counter()}
    for data in jpegs:
        image, size = decode_for(data, detector.pixels_needed)
        boxes: list[BBox] = [
            d.box for d in detector.infer([image])[0] if isinstance(d, Detection) and d.label in CARS and d.score >= 0.5
        ]
        boxes = [b for b in boxes if (b.x2 - b.x1) * (b.y2 - b.y1) >= 0.01]
        if not boxes:
            continue
        t0 = time.thread_time()
        frame, size = decode_for(data, partial(pixels_needed_for_crops, boxes=boxes, needed=classifier.pixels_needed))
        t1 = time.thread_time()
        batch = classifier.preprocess(cut(frame, size, boxes))
        t2 = time.thread_time()
        outputs = classifier.postprocess(classifier.run(batch), [size] * len(boxes))
        t3 = time.thread_time()
        whole = decode_for(data, classifier.pixels_needed)[0]
        classifier.infer([whole])
        t4 = time.thread_time()
        n = len(boxes)
        crops_total += n
        stages["decode"].append((t1 - t0) * 1000 / n)
        stages["cut+preprocess"].append((t2 - t1) * 1000 / n)
        stages["infer"].append((t3 - t2) * 1000 / n)
        stages["whole frame"].append((t4 - t3) * 1000)
        for b, labels in zip(boxes, outputs, strict=True):
            best = labels[0] if labels and isinstance(labels[0], Classification) else None
            side = "left car" if (b.x1 + b.x2) / 2 < 0.6 else "right car"
            classes[side][best.label if best else "-"] += 1
    per_crop = {k: round(statistics.median(v), 2) for k, v in stages.items() if k != "whole frame"}
    return {
        "frames": len(jpegs),
        "crops": crops_total,
        "threads": threads,
        "ms_per_crop_median": per_crop | {"total": round(sum(per_crop.values()), 2)},
        "ms_whole_frame_median": round(statistics.median(stages["whole frame"]), 2),
        "classes": {side: dict(c.most_common()) for side, c in classes.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])  # no options: --help says what it does
    parser.parse_args()
    doc = run(1)
    costs = doc["ms_per_crop_median"]
    print_table(
        f"cascade on {VIDEO.name}: {doc['crops']} crops in {doc['frames']} frames, median CPU ms",
        ["stage", "ms per crop"],
        [[stage, value] for stage, value in costs.items()]
        + [["(the whole frame, for comparison)", doc["ms_whole_frame_median"]]],
    )
    for side, counts in doc["classes"].items():
        print(f"{side}: {counts}")
    write_result("cascade", doc)


if __name__ == "__main__":
    main()
