"""JPEG in and out, one way for every service (cv2 releases the GIL, so these run well in threads)."""

from __future__ import annotations

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


def decode_jpeg(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """BGR uint8; a clear error for bytes that are not a JPEG, or one larger than `max_pixels` (checked in its
    header first: the decoder would allocate whatever the header claims)."""
    check_jpeg_size(data, max_pixels)
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"not a decodable image ({len(data)} bytes)")
    return image
