"""What the worker's reduced JPEG decode costs in answers, and what it saves in CPU, offline on the sample video.

Every 3rd frame of video/vtest.mp4 is encoded as the reader stores it (JPEG quality 85) and decoded for each model
twice: whole, and as the worker does (shared.jpeg.decode_for: 1/2, 1/4 or 1/8 where that still gives the model's
resize its pixels, less UPSCALE_SLACK). The answers of the two decodes are compared:
- the SSD: detections of the same label whose boxes overlap at IoU > 0.7, one to one;
- EfficientNet-Lite0: the same top-1 label.
To say what such a difference means, the same comparison is made between two whole decodes of JPEGs at quality
85 and 90, a change nobody would call a different picture; and both decodes are compared with the whole decode
shrunk by area averaging straight to the model's resize (the antialiased picture, which neither path makes:
the preprocess shrinks bilinearly). Decode CPU ms per frame: this thread's CPU time, whole and
reduced in turn frame by frame, median of 3 passes.

    python -m bench.reduced_decode
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import av
import cv2

from bench.common import ROOT, print_table, write_result
from services.worker.onnx_model import LoadedModel, load_model
from shared.contracts import Detection
from shared.jpeg import Size, decode_for, decode_jpeg, encode_jpeg, reduction_for

VIDEO = ROOT / "video" / "vtest.mp4"
MODELS = ("ssd_mobilenet_v2_coco", "efficientnet_lite0")
EVERY = 3
IOU = 0.7


def matched(first: list[Detection], second: list[Detection]) -> int:
    """Detections of `first` with one of `second` of the same label at IoU > 0.7, each used once (greedy by IoU)."""
    pairs = sorted(
        ((a.box.iou(b.box), i, j) for i, a in enumerate(first) for j, b in enumerate(second) if a.label == b.label),
        reverse=True,
    )
    used_a: set[int] = set()
    used_b: set[int] = set()
    for iou, i, j in pairs:
        if iou > IOU and i not in used_a and j not in used_b:
            used_a.add(i)
            used_b.add(j)
    return len(used_a)


def answers(model: LoadedModel, image: Any, frame: Size) -> list[Any]:
    decoded = (image.shape[1], image.shape[0])
    [out] = model.postprocess(model.run(model.preprocess([image])), [frame], [decoded])
    return list(out)


def agreement(model: LoadedModel, a: list[list[Any]], b: list[list[Any]]) -> dict[str, Any]:
    if model.kind.value == "detection":
        return {
            "boxes": sum(len(x) for x in a),
            "other_boxes": sum(len(y) for y in b),
            "matched": sum(matched(x, y) for x, y in zip(a, b, strict=True)),
        }
    tops = [(x[0].label if x else None, y[0].label if y else None) for x, y in zip(a, b, strict=True)]
    return {"frames": len(tops), "same_top1": sum(p == q for p, q in tops)}


def decode_ms(jpegs: list[bytes], decoders: dict[str, Callable[[bytes], Any]]) -> dict[str, float]:
    """CPU ms per frame of each decoder, frame by frame in turn so that the machine's swings hit them alike."""
    passes: dict[str, list[float]] = {name: [] for name in decoders}
    for _ in range(3):
        spent = dict.fromkeys(decoders, 0.0)
        for data in jpegs:
            for name, decode in decoders.items():
                t0 = time.process_time()
                decode(data)
                spent[name] += time.process_time() - t0
        for name, seconds in spent.items():
            passes[name].append(seconds * 1000 / len(jpegs))
    return {name: statistics.median(values) for name, values in passes.items()}


def run() -> dict[str, Any]:
    with av.open(str(VIDEO)) as container:
        images = [f.to_ndarray(format="bgr24") for i, f in enumerate(container.decode(video=0)) if i % EVERY == 0]
    q85 = [encode_jpeg(image, 85) for image in images]
    q90 = [encode_jpeg(image, 90) for image in images]
    frame = (images[0].shape[1], images[0].shape[0])
    cases = []
    for name in MODELS:
        model = load_model(ROOT / "models" / name, intra_op_threads=1)
        reduction = reduction_for(frame, model.pixels_needed(frame))
        whole = [answers(model, decode_jpeg(d), frame) for d in q85]
        reduced = [answers(model, decode_for(d, model.pixels_needed)[0], frame) for d in q85]
        other_quality = [answers(model, decode_jpeg(d), frame) for d in q90]
        needed = model.pixels_needed(frame)
        filtered = [answers(model, cv2.resize(decode_jpeg(d), needed, interpolation=cv2.INTER_AREA), frame) for d in q85]
        cases.append(
            {
                "model": name,
                "frame": list(frame),
                "reduction": reduction,
                "decode_ms": decode_ms(q85, {"whole": decode_jpeg, "reduced": partial(decode_for, needed=model.pixels_needed)}),
                "reduced_vs_whole": agreement(model, whole, reduced),
                "quality_90_vs_85": agreement(model, whole, other_quality),
                "whole_vs_area_filtered": agreement(model, filtered, whole),
                "reduced_vs_area_filtered": agreement(model, filtered, reduced),
            }
        )
    return {"video": VIDEO.name, "frames": len(images), "jpeg_quality": 85, "cases": cases}


def _agreement_cell(a: dict[str, Any]) -> str:
    if "matched" in a:
        return f"{a['matched']} of {a['boxes']} boxes ({a['other_boxes']} found)"
    return f"{a['same_top1']} of {a['frames']} top-1"


def main() -> None:
    doc = run()
    rows = [
        [
            c["model"],
            f"1/{c['reduction']}",
            c["decode_ms"]["whole"],
            c["decode_ms"]["reduced"],
            _agreement_cell(c["reduced_vs_whole"]),
            _agreement_cell(c["quality_90_vs_85"]),
            _agreement_cell(c["whole_vs_area_filtered"]),
            _agreement_cell(c["reduced_vs_area_filtered"]),
        ]
        for c in doc["cases"]
    ]
    print_table(
        f"reduced JPEG decode on {doc['video']} ({doc['frames']} frames of {doc['cases'][0]['frame'][0]}x"
        f"{doc['cases'][0]['frame'][1]}): decode CPU ms per frame, and answers kept",
        [
            "model",
            "decode",
            "whole ms",
            "reduced ms",
            "reduced vs whole",
            "q90 vs q85 (both whole)",
            "whole vs area-filtered",
            "reduced vs area-filtered",
        ],
        rows,
    )
    write_result("reduced_decode", doc)


if __name__ == "__main__":
    main()
