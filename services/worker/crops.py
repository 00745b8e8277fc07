"""Crops for a cascade: the region of the frame a classifier sees for one detection box. Pure geometry, no I/O.

The region is a square around the box, a little larger than its longest side: a classifier's preprocess
(resize the short side, centre-crop) would otherwise cut the ends off a wide box (a car seen from the side), and
ImageNet models were trained on objects with some context around them. A square that does not fit in the frame
is shifted into it, and clipped where the frame is smaller than the square.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from shared.contracts import BBox
from shared.jpeg import Size

# Context around the box, a fraction of its longest side (measured on the vehicle clip: the tight box alone
# made EfficientNet-Lite0 see a "cassette player" or a "moving van" in a black saloon's rear).
CROP_MARGIN = 0.1

Region = tuple[int, int, int, int]  # x1, y1, x2, y2 in pixels, x2 and y2 exclusive


def crop_region(box: BBox, frame: Size, margin: float = CROP_MARGIN) -> Region:
    """The square region of a `frame` (width, height) in pixels that a classifier sees for `box`."""
    width, height = frame
    x1, y1, x2, y2 = box.x1 * width, box.y1 * height, box.x2 * width, box.y2 * height
    side = max(x2 - x1, y2 - y1, 1.0) * (1.0 + margin)
    side_x, side_y = min(side, width), min(side, height)
    left = min(max((x1 + x2 - side_x) / 2, 0.0), width - side_x)
    top = min(max((y1 + y2 - side_y) / 2, 0.0), height - side_y)
    # Rounded first: 0.1 x 1000 x 1.1 is 110.00000000000001, which must not become 111.
    rx1, ry1 = math.floor(round(left, 6)), math.floor(round(top, 6))
    rx2, ry2 = math.ceil(round(left + side_x, 6)), math.ceil(round(top + side_y, 6))
    return rx1, ry1, max(rx1 + 1, min(width, rx2)), max(ry1 + 1, min(height, ry2))


def region_size(region: Region) -> Size:
    return region[2] - region[0], region[3] - region[1]


def pixels_needed_for_crops(frame: Size, boxes: Sequence[BBox], needed: Callable[[Size], Size]) -> Size:
    """The smallest (width, height) the frame may be decoded at so that every crop of it still has the pixels the
    model needs (`needed`, of a crop's size in the full frame): a reduced JPEG decode then shrinks a crop no more
    than the preprocess would, less shared.jpeg.UPSCALE_SLACK. Crops small against the model's input need the full
    frame."""
    width, height = frame
    need_w = need_h = 1
    for box in boxes:
        crop_w, crop_h = region_size(crop_region(box, frame))
        model_w, model_h = needed((crop_w, crop_h))
        need_w = max(need_w, math.ceil(width * model_w / crop_w))
        need_h = max(need_h, math.ceil(height * model_h / crop_h))
    return min(need_w, width), min(need_h, height)


def cut(image: np.ndarray, frame: Size, boxes: Sequence[BBox]) -> list[np.ndarray]:
    """The crops of `boxes` from `image`, a decode of a `frame`-sized frame (possibly reduced): views, no copy."""
    scale_x, scale_y = image.shape[1] / frame[0], image.shape[0] / frame[1]
    crops = []
    for box in boxes:
        x1, y1, x2, y2 = crop_region(box, frame)
        ix1, iy1 = min(int(x1 * scale_x), image.shape[1] - 1), min(int(y1 * scale_y), image.shape[0] - 1)
        ix2, iy2 = max(ix1 + 1, math.ceil(x2 * scale_x)), max(iy1 + 1, math.ceil(y2 * scale_y))
        crops.append(image[iy1:iy2, ix1:ix2])
    return crops
