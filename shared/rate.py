"""One rate gate by stream time, for the reader's `target_fps` and the router's `max_fps` rules."""

from __future__ import annotations


class StreamRate:
    """At most `fps` frames per second of stream time (pts); 0 means no limit.

    The schedule is anchored to itself, not to the last frame taken, so a 25 fps source gated to 10 fps keeps 10
    frames a second, not 8.33; a jump in pts (a gap in the stream) moves the schedule up to it.
    """

    def __init__(self, fps: float) -> None:
        self.interval = 1.0 / fps if fps > 0 else 0.0
        self._next_due = 0.0

    def take(self, pts: float) -> bool:
        if not self.interval:
            return True
        if pts + 1e-6 < self._next_due:
            return False
        self._next_due = max(self._next_due + self.interval, pts - self.interval)
        return True
