"""Frame references per source, kept long enough to cut pre-roll before an event even exists."""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from shared.contracts import FrameRef, split_feed


@dataclass
class SourceFrames:
    pts: list[float] = field(default_factory=list)
    refs: list[FrameRef] = field(default_factory=list)


class FrameRing:
    """Sorted by stream time; pruned from the front by the caller's horizon, and hard-capped per feed (a source's run)."""

    def __init__(self, max_frames_per_source: int) -> None:
        self.max_frames = max_frames_per_source
        self._sources: dict[str, SourceFrames] = {}
        self.dropped = 0

    def add(self, ref: FrameRef) -> None:
        frames = self._sources.setdefault(ref.feed, SourceFrames())  # per run: each run's pts start at 0
        i = bisect.bisect_right(frames.pts, ref.pts)
        if i > 0 and frames.refs[i - 1].seq == ref.seq:
            return  # redelivered
        frames.pts.insert(i, ref.pts)
        frames.refs.insert(i, ref)
        overflow = len(frames.refs) - self.max_frames
        if overflow > 0:
            del frames.pts[:overflow], frames.refs[:overflow]
            self.dropped += overflow

    def prune_before(self, source_id: str, horizon: float) -> None:
        frames = self._sources.get(source_id)
        if frames:
            i = bisect.bisect_left(frames.pts, horizon)
            del frames.pts[:i], frames.refs[:i]

    def latest_pts(self, source_id: str) -> float | None:
        frames = self._sources.get(source_id)
        return frames.pts[-1] if frames and frames.pts else None

    def window(self, source_id: str, start: float, end: float) -> list[FrameRef]:
        """References covering [start, end], plus the last one before `start` to fill the first tick."""
        frames = self._sources.get(source_id)
        if not frames:
            return []
        lo = max(0, bisect.bisect_right(frames.pts, start) - 1)
        hi = bisect.bisect_right(frames.pts, end)
        return frames.refs[lo:hi]

    def forget(self, source_id: str) -> None:
        self._sources.pop(source_id, None)

    def forget_source(self, source_id: str) -> None:
        """Every run of a source: it moved to another replica."""
        for feed in [f for f in self._sources if split_feed(f)[0] == source_id]:
            del self._sources[feed]

    def __len__(self) -> int:
        return sum(len(f.refs) for f in self._sources.values())
