"""HTTP Range requests (RFC 9110 §14) over bytes in memory: one range, which is what browsers send to seek."""

from __future__ import annotations

import re

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


class UnsatisfiableRange(ValueError):
    """Answered with 416 and `Content-Range: bytes */<size>`."""


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(first, last) inclusive, or None for the whole body (no header, or one we may ignore: several ranges)."""
    if not header:
        return None
    header = header.strip()
    if "," in header:
        return None  # multipart answers are optional; the full body is a valid answer
    match = _RANGE.match(header)
    if match is None:
        raise UnsatisfiableRange(f"malformed Range header {header!r}")
    first, last = match.groups()
    if not first and not last:
        raise UnsatisfiableRange(f"malformed Range header {header!r}")
    if not first:  # suffix: the last N bytes
        n = int(last)
        if n == 0 or size == 0:
            raise UnsatisfiableRange(f"empty suffix range of a {size}-byte body")
        return max(0, size - n), size - 1
    start = int(first)
    end = size - 1 if not last else min(int(last), size - 1)
    if start >= size or (last and int(last) < start):
        raise UnsatisfiableRange(f"range {header!r} outside a {size}-byte body")
    return start, end
