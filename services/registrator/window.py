"""Which results of one run of a source and one model were absorbed, in bounded space: a watermark and a bitmap.

Every frame number below the watermark counts as seen; the `size` numbers from it up are one bit each. A result
ahead of the window slides it (the bits left behind are cleared), so a source that runs for days costs the same
few kilobytes as one that ran a minute, in memory and in Redis, and nothing is kept per result or per event.

The price: a result more than `size` frames behind the newest one is taken for seen (PAST) and dropped. Results
come back within about task_max_age of their frame being read (later ones are expired tasks), so the window must
hold at least that many frames of the fastest source: 16,384 is 9 minutes at 30 fps.
"""

from __future__ import annotations

import enum
import struct

_HEADER = struct.Struct("<qqq")  # watermark, count, size


class Seen(enum.Enum):
    NEW = "new"
    DUPLICATE = "duplicate"  # inside the window, already absorbed: a redelivery
    PAST = "past"  # below the watermark: taken for seen (absorbed, or too late to count)


class SeenWindow:
    def __init__(self, size: int, watermark: int = 0, count: int = 0, bits: bytes | None = None) -> None:
        if size < 8 or size % 8:
            raise ValueError(f"a seen window holds a whole number of bytes of frames: size {size} is not a multiple of 8")
        self.size = size
        self.watermark = watermark
        self.count = count  # distinct frame numbers absorbed, over the whole run
        self._bits = bytearray(bits) if bits is not None else bytearray(size // 8)
        if len(self._bits) != size // 8:
            raise ValueError(f"a window of {size} frames needs {size // 8} bytes of bits, not {len(self._bits)}")

    def add(self, seq: int) -> Seen:
        """Mark `seq` absorbed, unless it was before."""
        if seq < self.watermark:
            return Seen.PAST
        if seq >= self.watermark + self.size:
            self._slide(seq - self.size + 1)
        byte, mask = divmod(seq % self.size, 8)
        if self._bits[byte] & (1 << mask):
            return Seen.DUPLICATE
        self._bits[byte] |= 1 << mask
        self.count += 1
        return Seen.NEW

    def __contains__(self, seq: int) -> bool:
        if seq < self.watermark:
            return True
        if seq >= self.watermark + self.size:
            return False
        byte, mask = divmod(seq % self.size, 8)
        return bool(self._bits[byte] & (1 << mask))

    def _slide(self, watermark: int) -> None:
        """Move the watermark up to `watermark`, clearing the bits of the numbers it passes (they are reused)."""
        if watermark - self.watermark >= self.size:
            self._bits = bytearray(self.size // 8)
        else:
            for seq in range(self.watermark, watermark):
                byte, mask = divmod(seq % self.size, 8)
                self._bits[byte] &= ~(1 << mask) & 0xFF
        self.watermark = watermark

    def to_bytes(self) -> bytes:
        return _HEADER.pack(self.watermark, self.count, self.size) + bytes(self._bits)

    @classmethod
    def from_bytes(cls, raw: bytes) -> SeenWindow:
        watermark, count, size = _HEADER.unpack_from(raw)
        return cls(size, watermark, count, raw[_HEADER.size :])

    @classmethod
    def of(cls, size: int, seqs: set[int]) -> SeenWindow:
        """A window of the frame numbers `seqs` (the seen sets kept before windows, read once at restart)."""
        window = cls(size)
        for seq in sorted(seqs):  # ascending: each is new when added, so count is len(seqs)
            window.add(seq)
        return window
