"""Per-object events, free of I/O: one event per confirmed track (event_mode=object).

The counterpart of `EventTracker` (events.py) with the same surface, so the registrator can hold either. Each
source run and model has a `SourceTracker` (ByteTrack behind a reorder buffer); every frame it releases extends
the tracks it names:

- a track becomes an event once it has `min_frames` sightings at its label's minimum score with a box of at
  least `min_area` (weak detectors' one-frame false positives never do), and, where its model's rule requires
  zones the source defines, once it stood in one of them;
- the event has the track's majority label, the majority sub-label of attached classifications, its first and
  last sightings, frames, the best snapshot (highest score x area), the path of box centres (thinned evenly
  to `path_max_points`) and the zones entered;
- a track that moves less than `stationary_threshold` of its box's height for `stationary_after` seconds is
  stationary: its event stops extending (it closes after `gap`, marked stationary) and it opens no other until
  it moves again (a parked car alerts once);
- detections standing in an excluded zone are dropped before tracking (a mask), as Frigate does;
- consecutive sightings of a track that cross a line count in or out per label (`take_crossings`).

Stream time throughout, as in events.py. The per-track state that is not part of an open event (ByteTrack,
unconfirmed tracks, stationary anchors) saves per (feed, model) with `state_bytes` and comes back with
`load_state`; open events themselves are saved as today and come back with `adopt`.
"""

from __future__ import annotations

import json
import math
import uuid
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from pydantic import TypeAdapter

from services.registrator.events import EventRules, OpenEvent
from services.registrator.settings import RegistratorSettings
from services.registrator.tracking import SourceTracker, TrackedFrame, TrackerSettings, TrackerStateError
from services.registrator.zones import SourceGeometry, centre
from shared.contracts import BBox, Classification, Detection, EventClose, EventState, FrameRef, InferenceResult, split_feed

EventKey = tuple[str, str, str]  # (feed, model, "#<track id>"): one open event per track
CropLabel = tuple[BBox, Classification]  # a box of a detection and a second model's best class for its crop
# Frames whose track assignments are kept to find the track of a box a second model classified.
_RECENT_FRAMES = 256


@dataclass(frozen=True)
class ObjectRules:
    events: EventRules
    min_frames: int = 3
    min_area: float = 0.0
    stationary_after: float = 10.0
    stationary_threshold: float = 0.25
    stitch_heights: float = 1.0  # 0: never continue an event with a new track
    path_max_points: int = 64
    tracker: TrackerSettings = field(default_factory=TrackerSettings)
    geometry: dict[str, SourceGeometry] = field(default_factory=dict)  # by source id
    require_zones: dict[str, frozenset[str]] = field(default_factory=dict)  # by model
    exclude_zones: dict[str, frozenset[str]] = field(default_factory=dict)  # by model

    @classmethod
    def from_settings(cls, settings: RegistratorSettings) -> ObjectRules:
        return cls(
            events=EventRules.from_settings(settings),
            min_frames=settings.object_min_frames,
            min_area=settings.object_min_area,
            stationary_after=settings.stationary_after,
            stationary_threshold=settings.stationary_threshold,
            path_max_points=settings.path_max_points,
            stitch_heights=settings.track_stitch_heights,
            tracker=TrackerSettings(
                reorder_depth=settings.track_reorder_depth,
                lost_seconds=settings.track_lost_seconds,
                activation_score=settings.track_activation_score,
                matching_threshold=settings.track_match_threshold,
            ),
            geometry={source: SourceGeometry.from_settings(zones) for source, zones in settings.zones.items()},
            require_zones={m: frozenset(r.require_zones) for m, r in settings.event_rules.items() if r.require_zones},
            exclude_zones={m: frozenset(r.exclude_zones) for m, r in settings.event_rules.items() if r.exclude_zones},
        )

    def geometry_of(self, source_id: str) -> SourceGeometry:
        return self.geometry.get(source_id) or SourceGeometry()

    def required(self, model: str, source_id: str) -> frozenset[str]:
        """The required zones that this source defines (none: the source is not filtered)."""
        names = self.require_zones.get(model, frozenset())
        return names & {zone.name for zone in self.geometry_of(source_id).zones}


@dataclass
class TrackState:
    """What the registrator knows of one track besides ByteTrack's own state."""

    track_id: int
    first_pts: float
    last_pts: float
    last_centre: tuple[float, float] | None = None
    anchor: tuple[float, float] | None = None  # where it was when it last moved
    anchor_pts: float = 0.0
    stationary: bool = False
    confirming: int = 0  # sightings that count towards confirmation
    sub_labels: dict[str, int] = field(default_factory=dict)
    sub_scores: dict[str, float] = field(default_factory=dict)
    candidate: OpenEvent | None = None  # the event it makes once confirmed, accumulating meanwhile
    events: int = 0  # events it made so far


_TRACKS = TypeAdapter(list[TrackState])


class ObjectEventTracker:
    """Open events per tracked object; feed it results, it tells what opened, changed and closed."""

    def __init__(self, rules: ObjectRules) -> None:
        self.rules = rules
        self.open: dict[EventKey, OpenEvent] = {}
        self.trackers: dict[tuple[str, str], SourceTracker] = {}
        self.tracks: dict[tuple[str, str], dict[int, TrackState]] = {}
        self.late = 0  # results too far behind to be tracked (dropped)
        self.duplicates = 0
        self._crossings: Counter[tuple[str, str, str, str]] = Counter()
        self._dirty: set[tuple[str, str]] = set()
        self._recent: dict[tuple[str, str], deque[tuple[int, list[tuple[int, BBox]]]]] = {}
        # Crop labels of frames still in the reorder buffer: (feed, detection model) -> seq -> labels. Few: the
        # buffer holds reorder_depth frames, and each is released (or flushed) in time.
        self._waiting: dict[tuple[str, str], dict[int, list[CropLabel]]] = {}
        # A new track that continues the event of a track ByteTrack lost: new id -> the event's track id.
        self.stitched: dict[tuple[str, str], dict[int, int]] = {}
        self._extended: dict[str, int] = {}  # event id -> the frame seq that last extended it
        self.stitches = 0  # new tracks that continued a lost track's event

    @staticmethod
    def key(feed: str, model: str, track_id: int) -> EventKey:
        return (feed, model, f"#{track_id}")

    # -- feeding ---------------------------------------------------------------------------------

    def observe(self, result: InferenceResult) -> tuple[list[OpenEvent], list[OpenEvent]]:
        """Apply one result; returns (events it extended, new ones first in CREATED, and events it closed).

        The result waits in the reorder buffer first: what it changes shows once newer results release it."""
        frame = result.frame
        pair = (frame.feed, result.model)
        tracker = self._tracker(pair)
        kept = [d for d in result.detections if self._accepted(result.model, frame.source_id, d)]
        late, duplicates = tracker.late, tracker.duplicates
        frames = tracker.push(result.model_copy(update={"detections": kept}))
        self.late += tracker.late - late
        self.duplicates += tracker.duplicates - duplicates
        self._dirty.add(pair)
        return self._apply(pair, frames)

    def flush(self, feed: str, model: str) -> tuple[list[OpenEvent], list[OpenEvent]]:
        """Track the frames still in the reorder buffer: call before closing a feed whose results stopped."""
        tracker = self.trackers.get((feed, model))
        if tracker is None or not tracker.buffered:
            return [], []
        self._dirty.add((feed, model))
        return self._apply((feed, model), tracker.flush())

    def _tracker(self, pair: tuple[str, str]) -> SourceTracker:
        tracker = self.trackers.get(pair)
        if tracker is None:
            tracker = self.trackers[pair] = SourceTracker(self.rules.tracker)
            self.tracks[pair] = {}
        return tracker

    def _accepted(self, model: str, source_id: str, det: Detection) -> bool:
        if self.rules.events.threshold(model, source_id, det.label) is None:
            return False
        excluded = self.rules.exclude_zones.get(model)
        return not (excluded and excluded & set(self.rules.geometry_of(source_id).zones_of(det.box)))

    def _apply(self, pair: tuple[str, str], frames: list[TrackedFrame]) -> tuple[list[OpenEvent], list[OpenEvent]]:
        changed: dict[str, OpenEvent] = {}
        closed: list[OpenEvent] = []
        created: set[str] = set()  # opened in this call: they stay CREATED for the caller to see
        for tracked in frames:
            closed += self.expire(pair[0], pair[1], tracked.frame.pts)
            self._recent.setdefault(pair, deque(maxlen=_RECENT_FRAMES)).append(
                (tracked.frame.seq, [(track_id, det.box) for track_id, det in tracked.tracks])
            )
            for track_id, det in tracked.tracks:
                event, ended = self._sighting(pair, tracked.frame, track_id, det, created)
                closed += ended
                if event is not None:
                    changed[event.id] = event
            for event in self._attach_waiting(pair, tracked.frame.seq):
                changed[event.id] = event
        # An event closed later in the same call is reported closed, and as changed if it changed first.
        return list(changed.values()), closed

    def _sighting(
        self, pair: tuple[str, str], frame: FrameRef, track_id: int, det: Detection, created: set[str]
    ) -> tuple[OpenEvent | None, list[OpenEvent]]:
        feed, model = pair
        rules, pts = self.rules, frame.pts
        track = self.tracks[pair].get(track_id)
        if track is None:
            track = self.tracks[pair][track_id] = TrackState(track_id=track_id, first_pts=pts, last_pts=pts)
        position = centre(det.box)
        geometry = rules.geometry_of(frame.source_id)
        if track.last_centre is not None:
            for line, direction in geometry.crossings(track.last_centre, position):
                self._crossings[(frame.source_id, line, det.label, direction)] += 1
        track.last_centre, track.last_pts = position, max(track.last_pts, pts)
        zones = geometry.zones_of(det.box)
        self._update_motion(track, position, det.box, pts)
        threshold = rules.events.threshold(model, frame.source_id, det.label)
        if threshold is not None and det.score >= threshold and det.box.area() >= rules.min_area:
            track.confirming += 1

        key = self.key(feed, model, track_id)
        aliases = self.stitched.setdefault(pair, {})
        if track_id in aliases:
            continued = self.key(feed, model, aliases[track_id])
            if continued in self.open:
                key = continued
            else:
                del aliases[track_id]  # that event closed: the track goes on under its own id
        event = self.open.get(key)
        closed: list[OpenEvent] = []
        if event is not None:
            if track.stationary:
                if event.stationary:
                    return None, closed
                event.stationary = True  # once: the record says so; the event no longer extends
                return event, closed
            event.stationary = False
            if pts - event.start > rules.events.max_duration:
                closed.append(self._close(key, EventClose.MAX_DURATION))
                event = self._open(key, track, self._fresh(frame, model, event.track_id), created)
            elif event.state is EventState.CREATED and event.id not in created:
                event.state = EventState.PENDING
            if self._extended.get(event.id) == frame.seq:
                return None, closed  # a lost track came back beside the one that continued its event
        else:
            if track.stationary:
                return None, closed  # a parked object: no new event until it moves
            candidate = track.candidate
            if candidate is None or pts - candidate.start > rules.events.max_duration:
                # Not yet an event: what it gathers becomes the event's (bounded like an event's span).
                candidate = track.candidate = self._fresh(frame, model, track.track_id)
            self._extend(candidate, frame, det, zones)
            if not self._confirmed(track, candidate, model, frame.source_id):
                return None, closed
            track.candidate = None
            lost = self._lost_event(pair, track, candidate)
            if lost is None:
                event = self._open(key, track, candidate, created)
            else:
                aliases[track_id] = lost.track_id if lost.track_id is not None else track_id
                self.stitches += 1
                self._merge(lost, candidate)
                event = lost
                if event.state is EventState.CREATED and event.id not in created:
                    event.state = EventState.PENDING
            self._extended[event.id] = frame.seq
            return event, closed
        self._extend(event, frame, det, zones)
        self._extended[event.id] = frame.seq
        return event, closed

    def _lost_event(self, pair: tuple[str, str], track: TrackState, candidate: OpenEvent) -> OpenEvent | None:
        """The open event whose object this new track probably is: ByteTrack lost it (its prediction drifts off a
        small, jittery box) and started a new id where it reappeared. Same label, last seen before the new track's
        first sighting (never two objects seen at once), within `stitch_heights` box heights of where it was."""
        if self.rules.stitch_heights <= 0 or not candidate.path or candidate.best_box is None:
            return None
        first = candidate.path[0][1:]
        label = candidate.label_counts.most_common(1)[0][0]
        reach = self.rules.stitch_heights * (candidate.best_box.y2 - candidate.best_box.y1)
        best: tuple[float, OpenEvent] | None = None
        for (feed, model, _), event in self.open.items():
            if (feed, model) != pair or event.stationary or event.end >= track.first_pts:
                continue
            if event.label_counts.most_common(1)[0][0] != label:
                continue
            last = (event.path_tail or event.path[-1])[1:]
            distance = math.dist(last, first)
            if distance <= reach and (best is None or distance < best[0]):
                best = (distance, event)
        return best[1] if best is not None else None

    def _merge(self, event: OpenEvent, candidate: OpenEvent) -> None:
        event.start = min(event.start, candidate.start)
        event.end = max(event.end, candidate.end)
        event.frames += candidate.frames
        event.label_counts.update(candidate.label_counts)
        if candidate.best_box is not None and (
            event.best_box is None or candidate.best_score * candidate.best_box.area() > event.best_score * event.best_box.area()
        ):
            event.best_score, event.best_frame_seq, event.best_frame_url = (
                candidate.best_score,
                candidate.best_frame_seq,
                candidate.best_frame_url,
            )
            event.best_detections, event.best_box = candidate.best_detections, candidate.best_box
        event.zones += [zone for zone in candidate.zones if zone not in event.zones]
        for point in [*candidate.path, *([candidate.path_tail] if candidate.path_tail else [])]:
            self._add_point(event, point)

    def _fresh(self, frame: FrameRef, model: str, track_id: int | None) -> OpenEvent:
        return OpenEvent(
            id=f"{frame.source_id}-{uuid.uuid4().hex[:16]}",
            source_id=frame.source_id,
            run=frame.run,
            model=model,
            label="",
            start=frame.pts,
            end=frame.pts,
            start_wall=frame.wall_time,
            track_id=track_id,
        )

    def _open(self, key: EventKey, track: TrackState, event: OpenEvent, created: set[str]) -> OpenEvent:
        event.state = EventState.CREATED
        self._sub_label(track, event)
        self.open[key] = event
        created.add(event.id)
        track.events += 1
        return event

    def _confirmed(self, track: TrackState, candidate: OpenEvent, model: str, source_id: str) -> bool:
        if track.confirming < self.rules.min_frames:
            return False
        # The zones of this would-be event, not of the track's whole life: a track that comes back after its event
        # closed (or that ByteTrack moved onto another object) opens no event outside the required zones.
        required = self.rules.required(model, source_id)
        return not required or bool(required & set(candidate.zones))

    def _update_motion(self, track: TrackState, position: tuple[float, float], box: BBox, pts: float) -> None:
        """Stationary: no move beyond a fraction of its own height (scale-free: near and far alike) for a while."""
        limit = self.rules.stationary_threshold * max(box.y2 - box.y1, 1e-6)
        if track.anchor is None or math.dist(track.anchor, position) > limit:
            track.anchor, track.anchor_pts, track.stationary = position, pts, False
        elif pts - track.anchor_pts >= self.rules.stationary_after:
            track.stationary = True

    def _extend(self, event: OpenEvent, frame: FrameRef, det: Detection, zones: list[str]) -> None:
        event.start = min(event.start, frame.pts)
        event.end = max(event.end, frame.pts)
        event.frames += 1
        event.label_counts[det.label] += 1
        if not event.label:
            event.label = det.label
        rank = det.score * det.box.area()
        if event.best_box is None or rank > event.best_score * event.best_box.area():
            event.best_score, event.best_frame_seq, event.best_frame_url = det.score, frame.seq, frame.url
            event.best_detections, event.best_box = [det], det.box
        for zone in zones:
            if zone not in event.zones:
                event.zones.append(zone)
        x, y = centre(det.box)
        self._add_point(event, (round(frame.pts, 3), round(x, 4), round(y, 4)))

    def _add_point(self, event: OpenEvent, point: tuple[float, float, float]) -> None:
        event.path_skipped += 1
        if event.path_skipped >= event.path_stride:
            event.path.append(point)
            event.path_skipped, event.path_tail = 0, None
            if len(event.path) > self.rules.path_max_points:
                # Every other point, and half as many from now on: the path stays evenly spaced in sightings.
                event.path = event.path[::2]
                event.path_stride *= 2
        else:
            event.path_tail = point

    # -- sub-labels (a second model on the object's crop) ------------------------------------------

    def attach_crops(self, result: InferenceResult) -> list[OpenEvent]:
        """A classification of crops of a detection model's boxes (a cascade): each crop's best class counts towards
        the sub-label of the track whose detection had that box. Returns the open events whose sub-label changed.

        The crop task left the router after the detection result reached the results stream, so that result was
        absorbed first; but its frame may still wait in the tracker's reorder buffer: its labels wait with it."""
        if result.crop_of is None or result.error is not None:
            return []
        labels = [(crop.box, crop.classifications[0]) for crop in result.crops if crop.classifications]
        pair, seq = (result.frame.feed, result.crop_of), result.frame.seq
        tracker = self.trackers.get(pair)
        if not labels or tracker is None:
            return []
        if tracker.holds(seq):
            self._waiting.setdefault(pair, {}).setdefault(seq, []).extend(labels)
            return []
        return self._attach(pair, seq, labels)

    def _attach(self, pair: tuple[str, str], seq: int, labels: list[CropLabel]) -> list[OpenEvent]:
        changed: dict[str, OpenEvent] = {}
        for box, label in labels:
            track_id = self.track_for(pair[0], pair[1], seq, box)
            if track_id is None:
                continue  # a detection no track took (too weak to start one), or a frame too old to be recent
            event = self.attach_sub_label(pair[0], pair[1], track_id, label.label, label.score)
            if event is not None:
                changed[event.id] = event
        return list(changed.values())

    def _attach_waiting(self, pair: tuple[str, str], seq: int) -> list[OpenEvent]:
        """The frame `seq` was just tracked: the crop labels that waited for it (and any of older frames, which
        are past waiting for) count now."""
        waiting = self._waiting.get(pair)
        if not waiting:
            return []
        changed = []
        for older in sorted(s for s in waiting if s <= seq):
            labels = waiting.pop(older)
            if older == seq:
                changed += self._attach(pair, seq, labels)
        return changed

    def track_for(self, feed: str, model: str, seq: int, box: BBox) -> int | None:
        """The track of the detection with this box in frame `seq` (a recent one), if any."""
        for frame_seq, boxes in reversed(self._recent.get((feed, model), ())):
            if frame_seq == seq:
                best = max(boxes, key=lambda tb: tb[1].iou(box), default=None)
                return best[0] if best is not None and best[1].iou(box) >= 0.5 else None
        return None

    def attach_sub_label(self, feed: str, model: str, track_id: int, label: str, score: float) -> OpenEvent | None:
        """Count one classification of the track's crop; returns its open event when that changed (to save)."""
        track = self.tracks.get((feed, model), {}).get(track_id)
        if track is None:
            return None
        track.sub_labels[label] = track.sub_labels.get(label, 0) + 1
        track.sub_scores[label] = track.sub_scores.get(label, 0.0) + score
        self._dirty.add((feed, model))
        event = self.open.get(self.key(feed, model, track_id))
        if event is None:
            return None  # an unconfirmed track: its event takes the majority when it opens
        before = (event.sub_label, event.sub_label_score)
        self._sub_label(track, event)
        return event if (event.sub_label, event.sub_label_score) != before else None

    @staticmethod
    def _sub_label(track: TrackState, event: OpenEvent) -> None:
        if not track.sub_labels:
            return
        # The majority; a tie goes to the label with the higher total score.
        label = max(track.sub_labels, key=lambda name: (track.sub_labels[name], track.sub_scores[name]))
        event.sub_label = label
        event.sub_label_score = round(track.sub_scores[label] / track.sub_labels[label], 4)

    # -- closing ---------------------------------------------------------------------------------

    def expire(self, feed: str, model: str, now_pts: float) -> list[OpenEvent]:
        """Close the feed's events not extended for longer than the gap at stream time `now_pts`, and forget
        tracks gone for longer than ByteTrack keeps them."""
        closed = []
        for key, event in list(self.open.items()):
            if key[0] == feed and key[1] == model and now_pts - event.end > self.rules.events.gap:
                closed.append(self._close(key, EventClose.GAP))
        tracks = self.tracks.get((feed, model), {})
        horizon = self.rules.events.gap + self.rules.tracker.lost_seconds
        for track_id in [t for t, track in tracks.items() if now_pts - track.last_pts > horizon]:
            if self.key(feed, model, track_id) not in self.open:
                del tracks[track_id]
        aliases = self.stitched.get((feed, model), {})
        for track_id in [t for t, old in aliases.items() if self.key(feed, model, old) not in self.open]:
            del aliases[track_id]  # its event closed: the track goes on under its own id
        return closed

    def close_quiet(self, feed: str, model: str, why: EventClose) -> list[OpenEvent]:
        """Close the events of a feed and model whose results stopped coming (the caller keeps the wall clock).
        Call `flush` first to have the buffered frames' events reported as changed too."""
        _, closed = self.flush(feed, model)
        return closed + [self._close(key, why) for key in list(self.open) if key[:2] == (feed, model)]

    def close_source(self, feed: str) -> list[OpenEvent]:
        """The feed (a run of a source) ended, or a new run of its source started: its trackers go too."""
        closed: list[OpenEvent] = []
        for pair in [p for p in self.trackers if p[0] == feed]:
            closed += self.flush(*pair)[1]
        for key in [k for k in self.open if k[0] == feed]:
            closed.append(self._close(key, EventClose.SOURCE_END))
        for pair in [p for p in self.trackers if p[0] == feed]:
            del self.trackers[pair]
            self.tracks.pop(pair, None)
            self._recent.pop(pair, None)
            self._waiting.pop(pair, None)
            self.stitched.pop(pair, None)
            self._dirty.discard(pair)
        return closed

    def buffered(self, feed: str, model: str) -> bool:
        """Whether results of the feed and model wait in the tracker's reorder buffer (`flush` releases them)."""
        tracker = self.trackers.get((feed, model))
        return tracker is not None and bool(tracker.buffered)

    def forget(self, feed: str) -> None:
        """The feed's source moved to another replica: drop what is kept of it, closing nothing."""
        for key in [k for k in self.open if k[0] == feed]:
            self._extended.pop(self.open.pop(key).id, None)
        for pair in [p for p in self.trackers if p[0] == feed]:
            del self.trackers[pair]
        for store in (self.tracks, self._recent, self.stitched, self._waiting):
            for pair in [p for p in store if p[0] == feed]:
                del store[pair]
        self._dirty = {p for p in self._dirty if p[0] != feed}

    def _close(self, key: EventKey, why: EventClose) -> OpenEvent:
        event = self.open.pop(key)
        event.closed_by = why
        self._extended.pop(event.id, None)
        return event

    def oldest_start(self, feed: str) -> float | None:
        """The earliest stream time an open event, or one about to open, may need frames from."""
        starts = [e.start for k, e in self.open.items() if k[0] == feed]
        for (f, _), tracks in self.tracks.items():
            if f == feed:
                starts += [t.candidate.start for t in tracks.values() if t.candidate is not None]
        for (f, _), tracker in self.trackers.items():
            pts = tracker.oldest_buffered_pts() if f == feed else None
            if pts is not None:
                starts.append(pts)
        return min(starts) if starts else None

    # -- state across restarts -------------------------------------------------------------------

    def adopt(self, event: OpenEvent) -> None:
        """Take back an open event saved before a restart."""
        if event.track_id is None:
            raise ValueError(f"event {event.id} has no track id: it is a scene event (event_mode=scene)")
        self.open[self.key(event.feed, event.model, event.track_id)] = event

    def take_dirty(self, source_id: str) -> set[tuple[str, str]]:
        """The source's (feed, model) pairs whose state changed since the last call: save `state_bytes` of each in
        that source's own transaction. Another source's state written there would pass the wrong lease's fence: if
        that source was moving, its tracker would be saved with results whose window was not, and the next holder
        would take their redelivery for a repeat and drop their sightings."""
        mine = {pair for pair in self._dirty if split_feed(pair[0])[0] == source_id}
        self._dirty -= mine
        return {pair for pair in mine if pair in self.trackers}

    def take_crossings(self, source_id: str) -> Counter[tuple[str, str, str, str]]:
        """The source's line crossings since the last call: (source id, line, label, "in" or "out") -> count."""
        mine = Counter({key: n for key, n in self._crossings.items() if key[0] == source_id})
        for key in mine:
            del self._crossings[key]
        return mine

    def state_bytes(self, feed: str, model: str) -> bytes:
        tracker = self._tracker((feed, model))
        doc: dict[str, Any] = {
            "tracker": tracker.to_bytes().decode(),
            "tracks": json.loads(_TRACKS.dump_json(list(self.tracks[(feed, model)].values()))),
            "stitched": list(self.stitched.get((feed, model), {}).items()),
        }
        return json.dumps(doc, separators=(",", ":")).encode()

    def load_state(self, feed: str, model: str, data: bytes | str) -> None:
        """Restore what `state_bytes` saved; a TrackerStateError leaves a fresh tracker (its ids restart)."""
        try:
            doc = json.loads(data)
            tracker = SourceTracker.from_bytes(doc["tracker"], self.rules.tracker)
            tracks = _TRACKS.validate_python(doc["tracks"])
            stitched = {int(new): int(old) for new, old in doc.get("stitched", [])}
        except TrackerStateError:
            raise
        except (ValueError, KeyError, TypeError) as exc:
            raise TrackerStateError(f"unreadable object state of {feed} {model} ({type(exc).__name__}: {exc})") from exc
        self.trackers[(feed, model)] = tracker
        self.tracks[(feed, model)] = {t.track_id: t for t in tracks}
        self.stitched[(feed, model)] = stitched
