"""Model-specific image preprocessing and output decoding: pure numpy/cv2, no I/O, no session.

Images come in as BGR uint8 HxWx3 (what cv2.imdecode returns). Every geometric step is described by a
`Geometry`, computed from the original size alone, so the postprocess stage can undo it without the
preprocess stage handing state over (the worker may time or even run the two stages apart).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple, get_args

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, field_validator, model_validator

from shared.contracts import BBox, Classification, Detection, ModelKind

Size = tuple[int, int]  # (width, height), the order FrameRef and BBox.to_pixels use
Triple = tuple[float, float, float]


class InputSpec(BaseModel):
    """What the network expects as input, and how a photo is turned into it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    layout: Literal["NHWC", "NCHW"]
    dtype: Literal["uint8", "float32"]
    width: PositiveInt
    height: PositiveInt
    color: Literal["RGB", "BGR"] = "RGB"
    resize: Literal["stretch", "letterbox", "resize_crop"] = "stretch"
    resize_short: PositiveInt | None = Field(default=None, description="resize_crop: short side before the centre crop")
    pad_value: int = Field(default=114, ge=0, le=255, description="letterbox border (Ultralytics uses 114)")
    # Per channel, in the network's colour order: x = (pixel - mean) / std. YOLO-style /255 is mean 0, std 255.
    mean: Triple = (0.0, 0.0, 0.0)
    std: Triple = (1.0, 1.0, 1.0)

    @field_validator("mean", "std", mode="before")
    @classmethod
    def _broadcast(cls, value: object) -> object:
        return (value, value, value) if isinstance(value, int | float) else value

    @field_validator("std")
    @classmethod
    def _nonzero(cls, value: Triple) -> Triple:
        if any(s == 0 for s in value):
            raise ValueError("std must not contain 0")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> InputSpec:
        if self.resize == "resize_crop":
            if self.resize_short is None:
                raise ValueError("resize: resize_crop needs resize_short")
            if self.resize_short < max(self.width, self.height):
                raise ValueError(f"resize_short {self.resize_short} is smaller than the {self.width}x{self.height} crop")
        elif self.resize_short is not None:
            raise ValueError(f"resize_short only applies to resize_crop, not {self.resize}")
        # A uint8 tensor cannot carry normalised values; silently ignoring mean/std would hide a wrong manifest.
        if self.dtype == "uint8" and (self.mean != (0.0, 0.0, 0.0) or self.std != (1.0, 1.0, 1.0)):
            raise ValueError("mean/std apply to float32 input only")
        return self


@dataclass(frozen=True, slots=True)
class Geometry:
    """input_px = original_px * scale + offset; `resized` is the size before padding or cropping."""

    original: Size
    input: Size
    resized: Size
    scale_x: float
    scale_y: float
    offset_x: int
    offset_y: int

    def to_original(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Input-pixel coordinates to normalised 0..1 coordinates of the original image, clipped."""
        w, h = self.original
        ox = (x - self.offset_x) / self.scale_x / w
        oy = (y - self.offset_y) / self.scale_y / h
        return np.clip(ox, 0.0, 1.0), np.clip(oy, 0.0, 1.0)


def geometry(original: Size, spec: InputSpec) -> Geometry:
    w, h = original
    if w <= 0 or h <= 0:
        raise ValueError(f"image size {w}x{h} is empty")
    tw, th = spec.width, spec.height
    if spec.resize == "stretch":
        nw, nh, ox, oy = tw, th, 0, 0
    elif spec.resize == "letterbox":
        r = min(tw / w, th / h)
        nw, nh = max(1, round(w * r)), max(1, round(h * r))
        # Floor on the top/left side matches Ultralytics' round(d - 0.1) for odd padding.
        ox, oy = (tw - nw) // 2, (th - nh) // 2
    else:
        assert spec.resize_short is not None
        r = spec.resize_short / min(w, h)
        nw, nh = max(tw, round(w * r)), max(th, round(h * r))
        ox, oy = -((nw - tw) // 2), -((nh - th) // 2)
    return Geometry((w, h), (tw, th), (nw, nh), nw / w, nh / h, ox, oy)


def image_size(image: np.ndarray) -> Size:
    return int(image.shape[1]), int(image.shape[0])


def _check_image(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        desc = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"expected a BGR uint8 HxWx3 image, got {desc}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"image of shape {image.shape} is empty")


def fit(image: np.ndarray, spec: InputSpec) -> np.ndarray:
    """Resize/pad/crop one BGR image to the network's HxW, still uint8 BGR."""
    _check_image(image)
    g = geometry(image_size(image), spec)
    resized = image if g.resized == g.original else cv2.resize(image, g.resized, interpolation=cv2.INTER_LINEAR)
    if spec.resize == "stretch":
        return resized
    if spec.resize == "letterbox":
        out = np.full((spec.height, spec.width, 3), spec.pad_value, dtype=np.uint8)
        nw, nh = g.resized
        out[g.offset_y : g.offset_y + nh, g.offset_x : g.offset_x + nw] = resized
        return out
    x0, y0 = -g.offset_x, -g.offset_y
    return resized[y0 : y0 + spec.height, x0 : x0 + spec.width]


def to_tensor(fitted: Sequence[np.ndarray], spec: InputSpec) -> np.ndarray:
    """Stack fitted BGR images into the network's batch: colour order, dtype, normalisation, layout."""
    batch = np.stack(fitted)
    if spec.color == "RGB":
        batch = batch[..., ::-1]
    if spec.dtype == "float32":
        mean = np.asarray(spec.mean, dtype=np.float32)
        inv_std = 1.0 / np.asarray(spec.std, dtype=np.float32)
        batch = (batch.astype(np.float32) - mean) * inv_std
    if spec.layout == "NCHW":
        batch = batch.transpose(0, 3, 1, 2)
    # onnxruntime copies non-contiguous input anyway; doing it here keeps that cost inside "preprocess".
    return np.ascontiguousarray(batch)


def preprocess(images: Sequence[np.ndarray], spec: InputSpec) -> np.ndarray:
    if not images:
        raise ValueError("preprocess needs at least one image")
    return to_tensor([fit(im, spec) for im in images], spec)


# ---------------------------------------------------------------- output adapters


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
