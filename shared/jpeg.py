"""JPEG in and out, one way for every service (cv2 releases the GIL, so these run well in threads)."""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

# What one decode may allocate: 50 MP is 150 MB of BGR. A frame is a few MP at most; a crafted header that
# claims 32768 x 32768 would ask for 3 GiB, and cv2's own limit (2^30 pixels) lets exactly that through.
DEFAULT_MAX_PIXELS = 50_000_000
# Start-of-frame markers (ITU T.81 B.1.1.3): baseline, extended, progressive, lossless, arithmetic; not DHT (C4),
# JPG (C8) or DAC (CC), which share the range.
_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
# Markers that stand alone, with no length after them: TEM and the restart markers.
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})
# libjpeg's DCT scaling: at 1/2, 1/4 or 1/8 the decoder drops the high frequencies of each 8x8 block instead of
# decoding them and throwing the pixels away later; each side comes out rounded up (ceil(w / 2), ...).
_READ_FLAGS = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}
REDUCTIONS = tuple(sorted(_READ_FLAGS, reverse=True))
# How far short of a model's input a reduced decode may fall per side (the resize then enlarges it that much).
# A 576-line frame at 1/2 has 288 rows for SSD's 300: on the sample video, that decode's boxes are closer to those
# of an antialiased (area-averaged) picture than the full decode's are, 1,841 against 1,806 of 1,905 at IoU > 0.7,
# and it costs 1.07 ms a frame against 1.41 (`make bench-reduced-decode`).
UPSCALE_SLACK = 0.05

Size = tuple[int, int]  # (width, height)


class ImageTooLarge(ValueError):
    """A JPEG whose header claims more pixels than allowed: refused before any decoding."""


def jpeg_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the JPEG's start-of-frame header, without decoding anything."""
    if data[:2] != b"\xff\xd8":
        raise ValueError(f"not a JPEG ({len(data)} bytes, no start-of-image marker)")
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            raise ValueError(f"not a valid JPEG: no marker at byte {pos}")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if marker in _STANDALONE:
            pos += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image, or the scan starts: no frame header came first
            break
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        if marker in _SOF:
            if pos + 9 > len(data) or length < 8:
                break
            height = int.from_bytes(data[pos + 5 : pos + 7], "big")
            width = int.from_bytes(data[pos + 7 : pos + 9], "big")
            if not width or not height:
                raise ValueError(f"JPEG frame header says {width}x{height}: no image size to check")
            return width, height
        pos += 2 + length
    raise ValueError(f"not a valid JPEG: no frame header in {len(data)} bytes")


def check_jpeg_size(data: bytes, max_pixels: int) -> tuple[int, int]:
    """The JPEG's (width, height), or ImageTooLarge when it has more than `max_pixels` pixels."""
    width, height = jpeg_size(data)
    if width * height > max_pixels:
        raise ImageTooLarge(
            f"JPEG of {width}x{height} ({width * height / 1e6:.0f} MP) is over image_max_pixels "
            f"({max_pixels / 1e6:g} MP): refused before decoding; raise image_max_pixels if such frames are genuine"
        )
    return width, height


def encode_jpeg(image: np.ndarray, quality: int = 85) -> bytes:
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()


def reduced_size(size: Size, reduction: int) -> Size:
    """What a decode at 1/`reduction` gives for a JPEG of `size`."""
    return -(-size[0] // reduction), -(-size[1] // reduction)


def reduction_for(size: Size, needed: Size) -> int:
    """The largest reduction (8, 4, 2, else 1) whose decode of a `size` JPEG is still at least `needed` on both
    sides, less UPSCALE_SLACK: whoever resizes it next shrinks it, or enlarges it by that much at most."""
    for reduction in REDUCTIONS:
        width, height = reduced_size(size, reduction)
        if width >= needed[0] * (1 - UPSCALE_SLACK) and height >= needed[1] * (1 - UPSCALE_SLACK):
            return reduction
    return 1


def decode_jpeg(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, reduction: int = 1) -> np.ndarray:
    """BGR uint8, at 1/`reduction` of each side (1, 2, 4 or 8; see reduction_for); a clear error for bytes that
    are not a JPEG, or one larger than `max_pixels` (checked in its header first: the decoder would allocate
    whatever the header claims)."""
    if reduction not in _READ_FLAGS:
        raise ValueError(f"JPEG reduction {reduction} is not one of {sorted(_READ_FLAGS)}")
    check_jpeg_size(data, max_pixels)
    image = cv2.imdecode(np.frombuffer(data, np.uint8), _READ_FLAGS[reduction])
    if image is None:
        raise ValueError(f"not a decodable image ({len(data)} bytes)")
    return image


def decode_for(data: bytes, needed: Callable[[Size], Size], max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, Size]:
    """The smallest decode that still gives `needed(frame size)` pixels, and the full frame's (width, height).

    Boxes found on the smaller image map to the full frame through that size (services.worker.preprocess)."""
    size = check_jpeg_size(data, max_pixels)
    reduction = reduction_for(size, needed(size))
    image = decode_jpeg(data, max_pixels, reduction)
    if (image.shape[1], image.shape[0]) != reduced_size(size, reduction):
        size = size[1], size[0]  # an EXIF orientation turned it (cv2 applies it): the frame is turned alike
    return image, size
