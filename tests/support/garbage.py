"""Malformed and oversized messages for the fault tests."""

from __future__ import annotations

import json

from shared.contracts import MAX_MESSAGE_BYTES


def garbage(i: int) -> bytes:
    """Three kinds in turn: not JSON, JSON of the wrong shape, and too big (over the contracts' 64 KiB)."""
    kind = i % 3
    if kind == 0:
        return bytes([i % 256]) * 17 + b"\xff\xfe not json"
    if kind == 1:
        return json.dumps({"v": 1, "source_id": "cam0", "seq": "many", "url": None, "i": i}).encode()
    return b'{"v": 1, "pad": "' + b"x" * (MAX_MESSAGE_BYTES + 1000) + b'"}'


def jpeg_bomb(side: int = 32768) -> bytes:
    """A real, small JPEG whose frame header claims side x side pixels: a decoder allocates what the header says
    (3 GiB of BGR at 32768), whatever the few bytes after it hold. NEVER decode it without a size check."""
    import cv2
    import numpy as np

    ok, buf = cv2.imencode(".jpg", np.full((16, 16, 3), 128, np.uint8))
    assert ok
    data = bytearray(buf.tobytes())
    sof = data.index(b"\xff\xc0")  # baseline start of frame: length (2), precision (1), height (2), width (2)
    data[sof + 5 : sof + 9] = side.to_bytes(2, "big") * 2 if side < 65536 else b"\xff\xff\xff\xff"
    return bytes(data)
