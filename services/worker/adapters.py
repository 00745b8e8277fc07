"""Output adapters: a model's raw outputs -> Detections or Classifications on the original image.

Pure numpy, no I/O, no session. Each adapter is named in a model's `model.yaml` (`output.adapter`); the
`Geometry` of each image (services.worker.preprocess) maps input pixels back to the original image.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple, get_args

import numpy as np

from services.worker.preprocess import Geometry
from shared.contracts import BBox, Classification, Detection, ModelKind


@dataclass(frozen=True, slots=True)
class PostParams:
    labels: Mapping[int, str]
    score_threshold: float
    top_k: int = 5
    class_filter: frozenset[str] | None = None
    iou_threshold: float = 0.45
    max_candidates: int = 3000  # YOLO: NMS cost is quadratic; a real frame never has this many boxes above threshold

    def label(self, class_id: int) -> str:
        return self.labels.get(class_id, f"class_{class_id}")

    def keep(self, label: str) -> bool:
        return self.class_filter is None or label in self.class_filter


Results = list[list[Detection]] | list[list[Classification]]
Decoder = Callable[[Sequence[np.ndarray], Sequence[Geometry], PostParams], Results]


class Adapter(NamedTuple):
    kind: ModelKind
    outputs: int  # how many model outputs the decoder reads, in the model's output order
    decode: Decoder


def _detections(xyxy: np.ndarray, scores: np.ndarray, class_ids: np.ndarray, g: Geometry, p: PostParams) -> list[Detection]:
    """Input-pixel boxes to Detections on the original image; boxes that vanish after clipping are dropped."""
    if len(xyxy) == 0:
        return []
    x1, y1 = g.to_original(xyxy[:, 0], xyxy[:, 1])
    x2, y2 = g.to_original(xyxy[:, 2], xyxy[:, 3])
    out: list[Detection] = []
    for i in np.argsort(-scores, kind="stable"):
        cid = int(class_ids[i])
        label = p.label(cid)
        if not p.keep(label) or x2[i] <= x1[i] or y2[i] <= y1[i]:
            continue
        box = BBox(x1=float(x1[i]), y1=float(y1[i]), x2=float(x2[i]), y2=float(y2[i]))
        out.append(Detection.on_image(label, cid, min(1.0, float(scores[i])), box, *g.original))
    return out


def decode_ssd_postprocessed(outputs: Sequence[np.ndarray], geoms: Sequence[Geometry], p: PostParams) -> Results:
    """TFLite_Detection_PostProcess: boxes [B,N,4] ymin,xmin,ymax,xmax in 0..1 of the input, classes, scores, count."""
    boxes, classes, scores, counts = outputs[:4]
    results: list[list[Detection]] = []
    for b, g in enumerate(geoms):
        n = int(np.ravel(counts)[b])
        sc = scores[b, :n]
        keep = sc >= p.score_threshold
        yx = boxes[b, :n][keep]
        iw, ih = g.input
        xyxy = np.stack([yx[:, 1] * iw, yx[:, 0] * ih, yx[:, 3] * iw, yx[:, 2] * ih], axis=1)
        cls = np.rint(classes[b, :n][keep]).astype(np.int64)
        results.append(_detections(xyxy, sc[keep], cls, g, p))
    return results


def nms(xyxy: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy NMS; indices of the kept boxes, best first."""
    x1, y1, x2, y2 = xyxy.T
    areas = np.maximum(x2 - x1, 0) * np.maximum(y2 - y1, 0)
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size:
        i = order[0]
        keep.append(int(i))
        rest = order[1:]
        iw = np.maximum(np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]), 0)
        ih = np.maximum(np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]), 0)
        inter = iw * ih
        iou = inter / np.maximum(areas[i] + areas[rest] - inter, 1e-9)
        order = rest[iou <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def decode_yolov8(outputs: Sequence[np.ndarray], geoms: Sequence[Geometry], p: PostParams) -> Results:
    """Ultralytics [B, 4+nc, N]: cx,cy,w,h in input pixels, then per-class scores (already sigmoid, no objectness)."""
    out = outputs[0]
    results: list[list[Detection]] = []
    for b, g in enumerate(geoms):
        pred = out[b].T  # [N, 4+nc]
        cls_scores = pred[:, 4:]
        cls = cls_scores.argmax(axis=1)
        sc = cls_scores[np.arange(len(cls)), cls]
        idx = np.flatnonzero(sc >= p.score_threshold)
        idx = idx[np.argsort(-sc[idx], kind="stable")[: p.max_candidates]]
        cx, cy, w, h = pred[idx, :4].T
        xyxy = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
        # Class-wise NMS in one pass: shifting each class far apart means boxes of different classes never overlap.
        shift = cls[idx, None].astype(np.float32) * (max(g.input) + 1.0)
        kept = nms(xyxy + shift, sc[idx], p.iou_threshold)
        results.append(_detections(xyxy[kept], sc[idx][kept], cls[idx][kept], g, p))
    return results


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e: np.ndarray = np.exp(z)
    out: np.ndarray = e / e.sum(axis=-1, keepdims=True)
    return out


def _top_k(probs: np.ndarray, p: PostParams) -> Results:
    results: list[list[Classification]] = []
    k = min(p.top_k, probs.shape[-1])
    for row in probs:
        best = np.argpartition(-row, k - 1)[:k]
        best = best[np.argsort(-row[best], kind="stable")]
        row_out: list[Classification] = []
        for cid in best:
            score = float(row[cid])
            label = p.label(int(cid))
            if score >= p.score_threshold and p.keep(label):
                row_out.append(Classification(label=label, class_id=int(cid), score=min(1.0, max(0.0, score))))
        results.append(row_out)
    return results


def decode_classification_logits(outputs: Sequence[np.ndarray], geoms: Sequence[Geometry], p: PostParams) -> Results:
    return _top_k(softmax(outputs[0].reshape(len(geoms), -1).astype(np.float64)), p)


def decode_classification_probs(outputs: Sequence[np.ndarray], geoms: Sequence[Geometry], p: PostParams) -> Results:
    return _top_k(outputs[0].reshape(len(geoms), -1).astype(np.float64), p)


ADAPTERS: dict[str, Adapter] = {
    "ssd_postprocessed": Adapter(ModelKind.DETECTION, 4, decode_ssd_postprocessed),
    "yolov8": Adapter(ModelKind.DETECTION, 1, decode_yolov8),
    "classification_logits": Adapter(ModelKind.CLASSIFICATION, 1, decode_classification_logits),
    "classification_probs": Adapter(ModelKind.CLASSIFICATION, 1, decode_classification_probs),
}
AdapterName = Literal["ssd_postprocessed", "yolov8", "classification_logits", "classification_probs"]
assert set(get_args(AdapterName)) == set(ADAPTERS), "AdapterName and ADAPTERS drifted apart"
