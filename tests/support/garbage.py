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
