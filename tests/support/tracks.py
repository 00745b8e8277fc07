"""Synthetic scenes with ground truth for tracker tests, and the two figures that judge a tracker.

An id switch: a ground-truth object tracked under one id, then under another (CLEAR-MOT's IDSW).
A fragment: each id an object has beyond its first (it was split into that many tracks).
A shared id: one track id given to two objects (a swap makes these too).
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import pairwise

from shared.contracts import BBox, Detection, FrameRef, InferenceResult, ModelKind

WIDTH, HEIGHT, FPS = 640, 480, 10.0


@dataclass(frozen=True)
class Walker:
    """An object moving in a straight line: its box's top-left corner at frame 0, a size and a speed, in pixels."""

    gt: int
    x: float
    y: float
    w: float
    h: float
    dx: float = 0.0
    dy: float = 0.0
    first: int = 0
    last: int = 10**9
    score: float = 0.9
    label: str = "person"

    def box(self, seq: int) -> tuple[float, float, float, float]:
        x, y = self.x + self.dx * seq, self.y + self.dy * seq
        return (x, y, x + self.w, y + self.h)


def detection(box: tuple[float, float, float, float], score: float = 0.9, label: str = "person") -> Detection:
    x1, y1, x2, y2 = (min(max(v, 0.0), 1.0) for v in (box[0] / WIDTH, box[1] / HEIGHT, box[2] / WIDTH, box[3] / HEIGHT))
    return Detection.on_image(label, 0, score, BBox(x1=x1, y1=y1, x2=x2, y2=y2), WIDTH, HEIGHT)


def frame(seq: int, source: str = "cam0") -> FrameRef:
    return FrameRef(
        source_id=source, seq=seq, pts=seq / FPS, wall_time=1000 + seq / FPS, url=f"http://h/{seq}", width=WIDTH, height=HEIGHT
    )


def result(seq: int, dets: list[Detection], source: str = "cam0", model: str = "ssd") -> InferenceResult:
    return InferenceResult(
        frame=frame(seq, source), model=model, kind=ModelKind.DETECTION, instance="i", detections=dets, finished_at=0
    )


@dataclass
class Scene:
    """Frames of detections and, for each detection, the object it shows."""

    results: list[InferenceResult]
    truth: dict[tuple[int, int], int]  # (seq, index of the detection in its result) -> object


def scene(walkers: list[Walker], frames: int, hidden: Iterable[tuple[int, int]] = ()) -> Scene:
    """`hidden`: (object, seq) pairs where the detector misses the object (occlusion)."""
    missing = set(hidden)
    results, truth = [], {}
    for seq in range(frames):
        dets = []
        for walker in walkers:
            if walker.first <= seq <= walker.last and (walker.gt, seq) not in missing:
                truth[(seq, len(dets))] = walker.gt
                dets.append(detection(walker.box(seq), walker.score, walker.label))
        results.append(result(seq, dets))
    return Scene(results, truth)


@dataclass(frozen=True)
class Score:
    switches: int
    fragments: int
    shared_ids: int
    tracked: int  # detections given an id

    def __str__(self) -> str:
        return f"switches={self.switches} fragments={self.fragments} shared_ids={self.shared_ids} tracked={self.tracked}"


def score(truth: dict[tuple[int, int], int], assigned: dict[tuple[int, int], int]) -> Score:
    """`assigned`: (seq, detection index) -> track id, for the detections the tracker named."""
    by_object: dict[int, list[tuple[int, int]]] = defaultdict(list)
    objects_of_id: dict[int, set[int]] = defaultdict(set)
    for (seq, index), track_id in assigned.items():
        gt = truth[(seq, index)]
        by_object[gt].append((seq, track_id))
        objects_of_id[track_id].add(gt)
    switches = fragments = 0
    for sightings in by_object.values():
        ids = [track_id for _, track_id in sorted(sightings)]
        switches += sum(1 for a, b in pairwise(ids) if a != b)
        fragments += len(set(ids)) - 1
    shared = sum(1 for gts in objects_of_id.values() if len(gts) > 1)
    return Score(switches, fragments, shared, len(assigned))


def crowd(seed: int, people: int = 8, frames: int = 200, miss: float = 0.1, jitter: float = 3.0) -> Scene:
    """People crossing the view both ways on overlapping lanes, nearer ones bigger, as on the sample video: each
    enters from a side at its own time, its box jitters by up to `jitter` px and its score between 0.55 and 0.95,
    and the detector misses it in a fraction `miss` of frames (alone or in runs of up to 5). Seeded: the same
    scene every time."""
    rng = random.Random(seed)
    walkers = []
    for gt in range(1, people + 1):
        y = rng.uniform(140, 300)  # its feet lower: nearer, so bigger
        h = 60 + (y - 140) * 0.5
        speed = rng.uniform(3.0, 7.0) * rng.choice((-1, 1))
        x = -h * 0.4 if speed > 0 else WIDTH
        first = rng.randrange(0, frames // 2)
        walkers.append(Walker(gt=gt, x=x, y=y - h, w=h * 0.4, h=h, dx=speed, first=first))
    hidden: set[tuple[int, int]] = set()
    for walker in walkers:
        seq = walker.first
        while seq < frames:
            if rng.random() < miss / 3:  # runs of 1 to 5 frames average 3: `miss` of the frames in all
                run = rng.randint(1, 5)
                hidden.update((walker.gt, s) for s in range(seq, seq + run))
                seq += run
            seq += 1
    results, truth = [], {}
    for seq in range(frames):
        dets: list[Detection] = []
        for walker in walkers:
            x1, y1, x2, y2 = walker.box(seq)
            if seq < walker.first or (walker.gt, seq) in hidden or x2 <= 0 or x1 >= WIDTH:
                continue
            nx1, ny1, nx2, ny2 = (v + rng.uniform(-jitter, jitter) for v in (x1, y1, x2, y2))
            truth[(seq, len(dets))] = walker.gt
            dets.append(detection((nx1, ny1, nx2, ny2), round(rng.uniform(0.55, 0.95), 2)))
        results.append(result(seq, dets))
    return Scene(results, truth)


@dataclass(frozen=True)
class EventScore:
    """Per-object events against the truth: what a user sees in the event list."""

    fragments: int  # events beyond the first that show one object (its pass split in two)
    merged: int  # events that show more than one object (a swap, or a new track stitched to another's event)
    missed: int  # objects in no event

    def __str__(self) -> str:
        return f"fragments={self.fragments} merged={self.merged} missed={self.missed}"


def event_score(sc: Scene, paths: dict[str, list[tuple[float, float, float]]]) -> EventScore:
    """`paths`: event id -> its path (stream seconds, box centre x, y), as events record them. Each point names the
    detection it was taken from, so the objects an event shows are read off its points."""
    detection_at: dict[tuple[int, float, float], int] = {}
    for (seq, index), gt in sc.truth.items():
        box = sc.results[seq].detections[index].box
        detection_at[(seq, round((box.x1 + box.x2) / 2, 4), round((box.y1 + box.y2) / 2, 4))] = gt
    objects_of = {
        event_id: {detection_at[key] for t, x, y in path if (key := (round(t * FPS), x, y)) in detection_at}
        for event_id, path in paths.items()
    }
    events_of: dict[int, set[str]] = defaultdict(set)
    for event_id, objects in objects_of.items():
        for gt in objects:
            events_of[gt].add(event_id)
    return EventScore(
        fragments=sum(len(events) - 1 for events in events_of.values()),
        merged=sum(1 for objects in objects_of.values() if len(objects) > 1),
        missed=len(set(sc.truth.values()) - events_of.keys()),
    )
