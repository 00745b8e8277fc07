"""Event semantics, free of I/O: which detections open, extend and close an event.

An event is one watched label in one source (for one model) while it keeps being seen with gaps
no longer than `gap` seconds of stream time. Stream time, not wall time: a file processed faster
than real time must give the same events as the same footage live.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from shared.contracts import BBox, Detection, Event, EventClose, EventState, InferenceResult, feed_key

if TYPE_CHECKING:
    from services.registrator.settings import RegistratorSettings


@dataclass
class OpenEvent:
    id: str
    source_id: str
    model: str
    label: str
    start: float
    end: float
    start_wall: float
    state: EventState = EventState.CREATED
    frames: int = 0
    label_counts: Counter[str] = field(default_factory=Counter)
    best_score: float = 0.0
    best_frame_seq: int = -1
    best_frame_url: str = ""
    best_detections: list[Detection] = field(default_factory=list)
    saved_at: float = 0.0  # wall time of the last persisted record
    closed_by: EventClose | None = None
    run: str = ""  # the reader start whose frames it is made of
    # Per-object events only (event_mode=object); a scene event keeps these defaults.
    track_id: int | None = None
    sub_label: str | None = None
    sub_label_score: float | None = None
    path: list[tuple[float, float, float]] = field(default_factory=list)  # (pts, x, y), thinned evenly
    path_stride: int = 1  # keep one sighting in this many: doubles each time the path is thinned
    path_skipped: int = 0
    path_tail: tuple[float, float, float] | None = None  # the latest sighting, when not kept in `path`
    zones: list[str] = field(default_factory=list)
    stationary: bool = False
    best_box: BBox | None = None

    @property
    def feed(self) -> str:
        return feed_key(self.source_id, self.run)

    def add(self, pts: float, seq: int, url: str, matches: list[Detection]) -> None:
        # Results arrive a little out of order when several replicas answer: the span only grows.
        self.start = min(self.start, pts)
        self.end = max(self.end, pts)
        self.frames += 1
        self.label_counts.update(d.label for d in matches)
        top = max(d.score for d in matches)
        if top > self.best_score:
            self.best_score, self.best_frame_seq, self.best_frame_url = top, seq, url
            self.best_detections = matches

    def record(self, **proofs: object) -> Event:
        """The persisted form; `proofs` fills clip and key-frame fields once they exist."""
        fields: dict[str, object] = dict(
            id=self.id,
            source_id=self.source_id,
            run=self.run,
            model=self.model,
            label=self.label_counts.most_common(1)[0][0] if self.label_counts else self.label,
            label_counts=dict(self.label_counts),
            state=self.state,
            start=round(self.start, 3),
            end=round(self.end, 3),
            start_wall=self.start_wall,
            frames=self.frames,
            best_score=round(self.best_score, 4),
            best_frame_seq=self.best_frame_seq,
            closed_by=self.closed_by,
            updated_at=time.time(),
        )
        if self.track_id is not None:
            fields.update(
                track_id=self.track_id,
                sub_label=self.sub_label,
                sub_label_score=self.sub_label_score,
                path=[*self.path, self.path_tail] if self.path_tail is not None else list(self.path),
                zones=list(self.zones),
                stationary=self.stationary,
                best_box=self.best_box,
            )
        fields.update(proofs)
        return Event(**fields)  # type: ignore[arg-type]


@dataclass(frozen=True)
class EventRules:
    watch_labels: frozenset[str]
    min_score: float
    gap: float
    max_duration: float
    # Overrides, most specific first: (model, source) then model -> {label: minimum score}. A model or
    # source named here watches exactly the labels it lists.
    per_model: dict[str, dict[str, float]] = field(default_factory=dict)
    per_source: dict[tuple[str, str], dict[str, float]] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings: RegistratorSettings) -> EventRules:
        return cls(
            watch_labels=frozenset(settings.watch_labels),
            min_score=settings.min_score,
            gap=settings.event_gap,
            max_duration=settings.max_event_duration,
            per_model={model: rule.labels for model, rule in settings.event_rules.items() if rule.labels},
            per_source={
                (model, source): scores for model, rule in settings.event_rules.items() for source, scores in rule.sources.items()
            },
        )

    def threshold(self, model: str, source_id: str, label: str) -> float | None:
        """The minimum score for `label` here, or None when it is not watched here."""
        scores = self.per_source.get((model, source_id)) or self.per_model.get(model)
        if scores is not None:
            return scores.get(label)
        return self.min_score if label in self.watch_labels else None


class EventTracker:
    """Open events per (source, model, label); feed it results, it tells what opened, changed and closed."""

    def __init__(self, rules: EventRules) -> None:
        self.rules = rules
        self.open: dict[tuple[str, str, str], OpenEvent] = {}
        # Where the last closed event of each key ended: a late result from inside it must not open another.
        self.closed_until: dict[tuple[str, str, str], float] = {}
        self.late = 0

    def _matches(self, result: InferenceResult) -> dict[str, list[Detection]]:
        found: dict[str, list[Detection]] = {}
        for det in result.detections:
            threshold = self.rules.threshold(result.model, result.frame.source_id, det.label)
            if threshold is not None and det.score >= threshold:
                found.setdefault(det.label, []).append(det)
        return found

    def observe(self, result: InferenceResult) -> tuple[list[OpenEvent], list[OpenEvent]]:
        """Apply one result; returns (events it extended, new ones first in CREATED, and events it closed)."""
        frame = result.frame
        changed: list[OpenEvent] = []
        closed = self.expire(frame.feed, result.model, frame.pts)
        for label, matches in self._matches(result).items():
            key = (frame.feed, result.model, label)
            event = self.open.get(key)
            # A late result from inside the last closed event belongs to it: it must neither open another
            # event nor widen the next one back over it (a redelivered result can be seconds late).
            if frame.pts <= self.closed_until.get(key, -1.0):
                self.late += 1
                continue
            if event is not None and frame.pts - event.start > self.rules.max_duration:
                closed.append(self._close(key, EventClose.MAX_DURATION))
                event = None
            if event is None:
                event = OpenEvent(
                    # Not the label: labels hold spaces ("traffic light"), and an id must be plain (the contract).
                    id=f"{frame.source_id}-{uuid.uuid4().hex[:16]}",
                    source_id=frame.source_id,
                    run=frame.run,
                    model=result.model,
                    label=label,
                    start=frame.pts,
                    end=frame.pts,
                    start_wall=frame.wall_time,
                )
                self.open[key] = event
                changed.append(event)
            else:
                if event.state is EventState.CREATED:
                    event.state = EventState.PENDING
                changed.append(event)
            event.add(frame.pts, frame.seq, frame.url, matches)
        return changed, closed

    def expire(self, feed: str, model: str, now_pts: float) -> list[OpenEvent]:
        """Close the feed's events not seen for longer than the gap at stream time `now_pts`."""
        closed = []
        for key, event in list(self.open.items()):
            if key[0] == feed and key[1] == model and now_pts - event.end > self.rules.gap:
                closed.append(self._close(key, EventClose.GAP))
        return closed

    def close_quiet(self, feed: str, model: str, why: EventClose) -> list[OpenEvent]:
        """Close the events of a feed and model whose results stopped coming (the caller keeps the wall clock)."""
        return [self._close(key, why) for key in list(self.open) if key[:2] == (feed, model)]

    def close_source(self, feed: str) -> list[OpenEvent]:
        """The feed (a run of a source) ended, or a new run of its source started."""
        closed = [self.open.pop(key) for key in list(self.open) if key[0] == feed]
        for event in closed:
            event.closed_by = EventClose.SOURCE_END
        for key in [k for k in self.closed_until if k[0] == feed]:
            del self.closed_until[key]
        return closed

    def _close(self, key: tuple[str, str, str], why: EventClose) -> OpenEvent:
        event = self.open.pop(key)
        event.closed_by = why
        self.closed_until[key] = event.end
        return event

    def oldest_start(self, feed: str) -> float | None:
        starts = [e.start for k, e in self.open.items() if k[0] == feed]
        return min(starts) if starts else None

    def adopt(self, event: OpenEvent) -> None:
        """Take back an open event saved before a restart."""
        self.open[(event.feed, event.model, event.label)] = event

    # The surface ObjectEventTracker adds, so the registrator holds either without asking which.

    def flush(self, feed: str, model: str) -> tuple[list[OpenEvent], list[OpenEvent]]:
        """Nothing is held back here: results apply as they come."""
        return [], []

    def take_dirty(self, source_id: str) -> set[tuple[str, str]]:
        """No state of its own beyond the open events."""
        return set()

    def take_crossings(self, source_id: str) -> Counter[tuple[str, str, str, str]]:
        """No tracks, so no line crossings."""
        return Counter()

    def state_bytes(self, feed: str, model: str) -> bytes:
        """Never asked: `take_dirty` names no pair."""
        raise NotImplementedError("scene events keep no tracker state")

    def load_state(self, feed: str, model: str, data: bytes | str) -> None:
        """Nothing to restore beyond the open events (a tracker state saved in object mode is ignored)."""

    def buffered(self, feed: str, model: str) -> bool:
        """Nothing is held back here."""
        return False

    def forget(self, feed: str) -> None:
        """The feed's source moved to another replica: drop what is kept of it, closing nothing."""
        for key in [k for k in self.open if k[0] == feed]:
            del self.open[key]
        for key in [k for k in self.closed_until if k[0] == feed]:
            del self.closed_until[key]
