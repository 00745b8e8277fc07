"""JPEG sizes come from the header, and a frame that claims too many pixels is refused before any decoding."""

from __future__ import annotations

import time

import cv2
import numpy as np
import pytest

from shared.jpeg import DEFAULT_MAX_PIXELS, ImageTooLarge, check_jpeg_size, decode_jpeg, encode_jpeg, jpeg_size
from tests.support.garbage import jpeg_bomb


def test_size_is_read_from_baseline_and_progressive_headers() -> None:
    image = np.zeros((48, 64, 3), np.uint8)
    assert jpeg_size(encode_jpeg(image)) == (64, 48)
    ok, progressive = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])
    assert ok and jpeg_size(progressive.tobytes()) == (64, 48)


def test_a_bomb_is_refused_from_its_header_without_decoding() -> None:
    bomb = jpeg_bomb()
    assert len(bomb) < 1000 and jpeg_size(bomb) == (32768, 32768)
    started = time.perf_counter()
    with pytest.raises(ImageTooLarge, match=r"32768x32768 \(1074 MP\) is over image_max_pixels \(50 MP\)"):
        decode_jpeg(bomb)
    assert time.perf_counter() - started < 0.1  # nothing was decoded (3 GiB would take seconds)
    with pytest.raises(ImageTooLarge):
        check_jpeg_size(encode_jpeg(np.zeros((100, 100, 3), np.uint8)), max_pixels=9_999)
    assert DEFAULT_MAX_PIXELS == 50_000_000


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "not a JPEG"),
        (b"\x89PNG\r\n\x1a\n", "not a JPEG"),
        (b"\xff\xd8 not really a jpeg", "no marker at byte 2"),
        (b"\xff\xd8\xff\xda\x00\x08", "no frame header"),  # a scan before any frame header
        (b"\xff\xd8\xff\xe0\x00\x10JFIF", "no frame header"),  # cut short
    ],
)
def test_what_is_not_a_jpeg_gets_a_clear_error(data: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        decode_jpeg(data)
