"""JPEG sizes come from the header, and a frame that claims too many pixels is refused before any decoding."""

from __future__ import annotations

import time

import cv2
import numpy as np
import pytest

from shared.jpeg import (
    DEFAULT_MAX_PIXELS,
    ImageTooLarge,
    check_jpeg_size,
    decode_for,
    decode_jpeg,
    encode_jpeg,
    jpeg_size,
    reduction_for,
)
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


def test_the_largest_reduction_that_still_gives_the_pixels_needed() -> None:
    assert reduction_for((768, 576), (341, 256)) == 2  # EfficientNet's short side of 256: 384x288 is enough
    assert reduction_for((768, 576), (300, 300)) == 2  # 288 rows for SSD's 300: within UPSCALE_SLACK
    assert reduction_for((640, 480), (300, 300)) == 1  # 240 rows would be enlarged by a quarter
    assert reduction_for((768, 560), (300, 300)) == 1  # 280 rows: 7 % short, past the slack
    assert reduction_for((3840, 2160), (300, 300)) == 4  # 960x540; 1/8 would be 480x270
    assert reduction_for((2400, 2400), (300, 300)) == 8
    assert reduction_for((100, 100), (300, 300)) == 1  # upscaled anyway: never reduced further


def test_a_reduced_decode_is_the_same_picture_smaller() -> None:
    # Left half dark, right half light: the reduced decode keeps the picture, at ceil(side / reduction).
    image = np.zeros((575, 767, 3), np.uint8)
    image[:, 384:] = 200
    data = encode_jpeg(image, 95)
    for reduction in (2, 4, 8):
        small = decode_jpeg(data, reduction=reduction)
        assert small.shape == (-(-575 // reduction), -(-767 // reduction), 3)
        mid = small.shape[1] // 2
        assert small[:, : mid - 2].mean() < 10 and small[:, mid + 2 :].mean() > 190
    with pytest.raises(ValueError, match=r"JPEG reduction 3 is not one of \[1, 2, 4, 8\]"):
        decode_jpeg(data, reduction=3)


def test_decode_for_returns_the_full_frame_size_with_the_smaller_image() -> None:
    data = encode_jpeg(np.zeros((576, 768, 3), np.uint8))
    image, size = decode_for(data, lambda frame: (frame[0] // 3, frame[1] // 3))
    assert image.shape == (288, 384, 3) and size == (768, 576)
    with pytest.raises(ImageTooLarge):
        decode_for(jpeg_bomb(), lambda frame: (1, 1))
