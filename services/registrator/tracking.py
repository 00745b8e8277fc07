"""Tracking, free of I/O: one ByteTrack (supervision 0.23) per source run and model, fed in stream order.

Results reach the registrator a little out of order (several worker replicas answer at once) and sometimes twice
(a redelivery). ByteTrack needs frames in order, each once, so a `SourceTracker` keeps a small reorder buffer by
frame seq and only hands a frame to ByteTrack once `reorder_depth` newer results have arrived after it, or when
the caller flushes (the source ended, or its results stopped).

"Far behind" means older than the newest frame already handed to ByteTrack: ByteTrack cannot go back in time,
and such a result was outrun by `reorder_depth` results of newer frames, far more than replicas reorder (each
holds one batch in flight, a few frames). It is dropped and counted in `late`. A seq seen before is a
redelivery: ignored and counted in `duplicates`.

Its whole state (ByteTrack's tracks with their Kalman means and covariances, ids, states and frame counters,
the id counters, the reorder buffer) saves to JSON with `to_bytes()` and comes back with `from_bytes()`, so that
a restarted registrator gives every object the id it had. JSON, not pickle: the bytes come back from Redis.
"""

from __future__ import annotations

import json
import math
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np
import supervision
from supervision.detection.core import Detections
from supervision.tracker.byte_tracker.basetrack import BaseTrack, TrackState
from supervision.tracker.byte_tracker.core import ByteTrack, STrack

from shared.contracts import Detection, FrameRef, InferenceResult

# The state format reads ByteTrack's own attributes: another supervision release may name them differently.
STATE_VERSION = f"1/supervision-{supervision.__version__}"
# Seqs remembered to tell a redelivery from a late result once a frame has left the reorder buffer: both are
# dropped, this only names them. Few, as the state is saved with every batch (the registrator's own window
# already drops redeliveries before they get here).
_RECENT_SEQS = 256
# Until a source's result rate is known (two frames with different stream times).
_DEFAULT_RATE = 10.0


class TrackerStateError(ValueError):
    """Saved tracker state that cannot be read back: the caller starts a fresh tracker (ids restart)."""


@dataclass(frozen=True)
class TrackerSettings:
    reorder_depth: int = 8
    lost_seconds: float = 2.0  # stream time a track lost from view keeps its id (occlusions)
    # ByteTrack's track_activation_threshold: a new track needs a detection above this + 0.1, and detections
    # below it only extend tracks. ByteTrack's 0.25 suits detectors that report down to 0.1; ours cut at 0.5, so
    # 0.5 makes the 0.5-0.6 band the "low" one (measured on the sample video: 65 ids instead of 125).
    activation_score: float = 0.5
    # ByteTrack's minimum_matching_threshold, a cost (1 - IoU x score): 0.9 lets the jittery boxes of small far
    # people match at our scores (IoU 0.2 at score 0.5), where 0.8 split them into fragments.
    matching_threshold: float = 0.9


@dataclass(frozen=True)
class TrackedFrame:
    """One frame as ByteTrack saw it: its detections that belong to a track, with the track's id."""

    frame: FrameRef
    tracks: list[tuple[int, Detection]]


class SourceTracker:
    """ByteTrack for one source run and one model, behind a reorder buffer; see the module's docstring."""

    def __init__(self, settings: TrackerSettings) -> None:
        if settings.reorder_depth < 0:
            raise ValueError(f"reorder_depth must be 0 or more, not {settings.reorder_depth}")
        self.settings = settings
        self._byte = ByteTrack(
            track_activation_threshold=settings.activation_score,
            minimum_matching_threshold=settings.matching_threshold,
            lost_track_buffer=30,
            frame_rate=30,
        )
        self._buffer: dict[int, InferenceResult] = {}
        self._recent: deque[int] = deque(maxlen=_RECENT_SEQS)
        self._recent_set: set[int] = set()
        self.last_seq = -1  # the newest frame handed to ByteTrack
        # ByteTrack's id counters are class attributes shared by every tracker in the process: each tracker keeps
        # its own and swaps them in around its updates, so ids count per source and survive a restart.
        self._next_internal = 0
        self._next_external = 0
        self._first_pts: float | None = None
        self._last_pts = 0.0
        self.frames = 0  # frames handed to ByteTrack
        self.duplicates = 0
        self.late = 0

    # -- feeding ---------------------------------------------------------------------------------

    def push(self, result: InferenceResult) -> list[TrackedFrame]:
        """Buffer one result; returns the frames this releases to ByteTrack, oldest first (often none)."""
        seq = result.frame.seq
        if seq in self._buffer or seq in self._recent_set:
            self.duplicates += 1
            return []
        if seq <= self.last_seq:
            self.late += 1
            return []
        self._buffer[seq] = result
        out = []
        while len(self._buffer) > self.settings.reorder_depth:
            out.append(self._feed(self._buffer.pop(min(self._buffer))))
        return out

    def flush(self) -> list[TrackedFrame]:
        """Release every buffered frame: no newer result is coming to wait for."""
        return [self._feed(self._buffer.pop(seq)) for seq in sorted(self._buffer)]

    @property
    def ids_issued(self) -> int:
        """Track ids given so far (ByteTrack names a track once it is confirmed)."""
        return self._next_external

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def holds(self, seq: int) -> bool:
        """Whether the frame `seq` waits in the reorder buffer (not yet handed to ByteTrack)."""
        return seq in self._buffer

    def oldest_buffered_pts(self) -> float | None:
        return min((r.frame.pts for r in self._buffer.values()), default=None)

    def _remember(self, seq: int) -> None:
        if len(self._recent) == self._recent.maxlen:
            self._recent_set.discard(self._recent[0])
        self._recent.append(seq)
        self._recent_set.add(seq)

    def _lost_frames(self, pts: float) -> int:
        """The lost buffer in ByteTrack's unit (updates), from seconds and the results' rate so far."""
        if self._first_pts is None:
            self._first_pts = pts
        self._last_pts = max(self._last_pts, pts)
        span = self._last_pts - self._first_pts
        rate = (self.frames / span) if span > 0 and self.frames > 1 else _DEFAULT_RATE
        return max(1, math.ceil(self.settings.lost_seconds * rate))

    def _feed(self, result: InferenceResult) -> TrackedFrame:
        frame = result.frame
        self._remember(frame.seq)
        self.last_seq = frame.seq
        self._byte.max_time_lost = self._lost_frames(frame.pts)
        self.frames += 1
        # A box with no area (clipped at the frame's edge) has no IoU with anything: ByteTrack would divide by 0.
        dets = [d for d in result.detections if d.box_px.x2 > d.box_px.x1 and d.box_px.y2 > d.box_px.y1]
        # Pixel boxes: ByteTrack's Kalman noise and aspect ratios are tuned for them.
        xyxy = np.array([[d.box_px.x1, d.box_px.y1, d.box_px.x2, d.box_px.y2] for d in dets], dtype=np.float32)
        given = Detections(
            xyxy=xyxy.reshape(-1, 4),
            confidence=np.array([d.score for d in dets], dtype=np.float32),
            class_id=np.array([d.class_id for d in dets], dtype=int),
            data={"index": np.arange(len(dets))},
        )
        BaseTrack._count, STrack._external_count = self._next_internal, self._next_external
        try:
            tracked = self._byte.update_with_detections(given)
        finally:
            self._next_internal, self._next_external = BaseTrack._count, STrack._external_count
        indexes = tracked.data.get("index", np.array([], dtype=int)) if len(tracked) else np.array([], dtype=int)
        pairs = sorted(
            (int(i), int(t)) for i, t in zip(indexes, tracked.tracker_id if tracked.tracker_id is not None else [], strict=True)
        )
        return TrackedFrame(frame=frame, tracks=[(track_id, dets[i]) for i, track_id in pairs])

    # -- state -----------------------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        byte = self._byte
        doc = {
            "version": STATE_VERSION,
            "frame_id": byte.frame_id,
            "max_time_lost": byte.max_time_lost,
            "tracked": [_track_state(t) for t in byte.tracked_tracks],
            "lost": [_track_state(t) for t in byte.lost_tracks],
            "removed": [_track_state(t) for t in byte.removed_tracks],
            "next_internal": self._next_internal,
            "next_external": self._next_external,
            "buffer": [r.model_dump(mode="json") for _, r in sorted(self._buffer.items())],
            "recent": list(self._recent),
            "last_seq": self.last_seq,
            "first_pts": self._first_pts,
            "last_pts": self._last_pts,
            "frames": self.frames,
            "duplicates": self.duplicates,
            "late": self.late,
        }
        return json.dumps(doc, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, data: bytes | str, settings: TrackerSettings) -> SourceTracker:
        try:
            doc = json.loads(data)
            if doc.get("version") != STATE_VERSION:
                raise TrackerStateError(f"tracker state of version {doc.get('version')!r}, this one reads {STATE_VERSION!r}")
            tracker = cls(settings)
            byte = tracker._byte
            byte.frame_id = int(doc["frame_id"])
            byte.max_time_lost = int(doc["max_time_lost"])
            byte.tracked_tracks = [_track_from(t, byte) for t in doc["tracked"]]
            byte.lost_tracks = [_track_from(t, byte) for t in doc["lost"]]
            byte.removed_tracks = [_track_from(t, byte) for t in doc["removed"]]
            tracker._next_internal = int(doc["next_internal"])
            tracker._next_external = int(doc["next_external"])
            tracker._buffer = {r.frame.seq: r for r in (InferenceResult.model_validate(x) for x in doc["buffer"])}
            for seq in doc["recent"]:
                tracker._remember(int(seq))
            tracker.last_seq = int(doc["last_seq"])
            tracker._first_pts = None if doc["first_pts"] is None else float(doc["first_pts"])
            tracker._last_pts = float(doc["last_pts"])
            tracker.frames, tracker.duplicates, tracker.late = int(doc["frames"]), int(doc["duplicates"]), int(doc["late"])
        except TrackerStateError:
            raise
        except (ValueError, KeyError, TypeError) as exc:
            raise TrackerStateError(f"unreadable tracker state ({type(exc).__name__}: {exc})") from exc
        return tracker


def _array(array: Any) -> dict[str, Any] | None:
    """An array with its dtype: a track's mean is float32 until its first prediction, and must stay so."""
    if array is None:
        return None
    values = np.asarray(array)
    return {"dtype": values.dtype.name, "shape": list(values.shape), "values": [float(x) for x in values.ravel()]}


def _array_from(doc: dict[str, Any] | None) -> Any:
    if doc is None:
        return None
    return np.array(doc["values"], dtype=np.dtype(doc["dtype"])).reshape(doc["shape"])


def _track_state(track: STrack) -> dict[str, Any]:
    """Every attribute ByteTrack reads of a track (supervision 0.23's STrack and BaseTrack)."""
    return {
        "tlwh": _array(track._tlwh),
        "mean": _array(track.mean),
        "covariance": _array(track.covariance),
        "activated": bool(track.is_activated),
        "score": float(track.score),
        "class_id": float(track.class_ids),
        "tracklet_len": int(track.tracklet_len),
        "external_id": int(track.external_track_id),
        "internal_id": int(track.internal_track_id),
        "min_frames": int(track.minimum_consecutive_frames),
        "state": int(track.state.value),
        "frame_id": int(track.frame_id),
        "start_frame": int(track.start_frame),
        "has_filter": track.kalman_filter is not None,
    }


def _track_from(doc: dict[str, Any], byte: ByteTrack) -> STrack:
    track = STrack(_array_from(doc["tlwh"]), doc["score"], doc["class_id"], doc["min_frames"])
    track.mean = _array_from(doc["mean"])
    track.covariance = _array_from(doc["covariance"])
    track.kalman_filter = byte.kalman_filter if doc["has_filter"] else None
    track.is_activated = bool(doc["activated"])
    track.tracklet_len = int(doc["tracklet_len"])
    track.external_track_id = int(doc["external_id"])
    track.internal_track_id = int(doc["internal_id"])
    track.state = TrackState(int(doc["state"]))
    track.frame_id = int(doc["frame_id"])
    track.start_frame = int(doc["start_frame"])
    return track
