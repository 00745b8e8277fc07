"""Model-specific image preprocessing: a photo -> the network's input batch. Pure numpy/cv2, no I/O, no session.

Images come in as BGR uint8 HxWx3 (what cv2.imdecode returns). Every geometric step is described by a
`Geometry`, computed from the original size alone, so the postprocess stage (services.worker.adapters) can
undo it without the preprocess stage handing state over (the worker may time or even run the two stages apart).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, field_validator, model_validator

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


def geometry(original: Size, spec: InputSpec, decoded: Size | None = None) -> Geometry:
    """How an image of size `original` becomes the network's input. `decoded`: the size it was actually decoded
    at, when smaller (a reduced JPEG decode): the steps are those of that image, and the scales go to `original`,
    so that boxes come out in the full frame's pixels."""
    g = _geometry(decoded or original, spec)
    if decoded is None or decoded == original:
        return g
    w, h = original
    if w <= 0 or h <= 0:
        raise ValueError(f"image size {w}x{h} is empty")
    # The reduced image covers the same field of view: input_px = decoded_px * s + o = original_px * s * d / w + o.
    return replace(g, original=original, scale_x=g.resized[0] / w, scale_y=g.resized[1] / h)


def _geometry(original: Size, spec: InputSpec) -> Geometry:
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


def pixels_needed(original: Size, spec: InputSpec) -> Size:
    """The fewest pixels per side an image of size `original` must have so that the preprocess only shrinks it:
    its size once resized, before padding or cropping. A JPEG decoded smaller than the frame (shared.jpeg
    decode_for) must be at least this."""
    return _geometry(original, spec).resized


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
    """Stack fitted BGR images into the network's batch: colour order, dtype, normalisation, layout.

    Each step is one pass into a fresh C-contiguous array or in place: numpy's copy of a channel-reversed view
    is ~100 times slower than cv2's colour swap, and normalising a strided array costs a copy per operation."""
    first = fitted[0]
    batch = np.empty((len(fitted), *first.shape), np.uint8)
    for i, image in enumerate(fitted):
        if spec.color == "RGB":
            cv2.cvtColor(image, cv2.COLOR_BGR2RGB, dst=batch[i])
        else:
            batch[i] = image
    if spec.layout == "NCHW":
        batch = batch.transpose(0, 3, 1, 2)
    if spec.dtype == "uint8":
        return np.ascontiguousarray(batch)  # NHWC: as it is; NCHW: one copy into the layout
    # One pass converts and lays out (onnxruntime copies non-contiguous input anyway); then in place.
    out = np.ascontiguousarray(batch, dtype=np.float32)
    shape = (3, 1, 1) if spec.layout == "NCHW" else (3,)
    out -= np.asarray(spec.mean, dtype=np.float32).reshape(shape)
    out *= (1.0 / np.asarray(spec.std, dtype=np.float32)).reshape(shape)
    return out


def preprocess(images: Sequence[np.ndarray], spec: InputSpec) -> np.ndarray:
    if not images:
        raise ValueError("preprocess needs at least one image")
    return to_tensor([fit(im, spec) for im in images], spec)
