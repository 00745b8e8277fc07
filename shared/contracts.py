"""Typed, versioned message contracts: the only shapes that travel between services.

Every contract has a `v` field and forbids unknown fields, so a message from a newer or
foreign producer fails loudly at the consumer instead of being half-understood.
"""

from __future__ import annotations

import enum
import json
import time
from typing import Annotated, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from shared.secrets import scrub
from shared.validation import describe_errors

# A source id is a NATS subject token and part of file names, so it is kept plain.
SOURCE_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
# A run id: one per reader start, so that two runs of a source, both counting from seq 0, are never confused.
RUN_ID_PATTERN = r"^[A-Za-z0-9_-]{0,32}$"
# An event id names a folder under TMP_PATH, a filer path and an api URL: plain characters only, so that no id
# is `..`, holds a `/`, or needs escaping (ids once held the label, and "traffic light" made events unreachable).
EVENT_ID_PATTERN = r"^[A-Za-z0-9_-]{1,128}$"


def feed_key(source_id: str, run: str) -> str:
    """One run of one source: the unit that frames, results, counts, events and drains are kept per."""
    return f"{source_id}@{run}" if run else source_id


def split_feed(feed: str) -> tuple[str, str]:
    """(source id, run) of a feed key."""
    source_id, _, run = feed.partition("@")
    return source_id, run


# Text that may quote a URL (an error, a source's address): credentials are scrubbed whenever one is built or
# read, so no record on the bus, in Redis or from the api carries a password, whoever wrote it.
Scrubbed = Annotated[str, AfterValidator(scrub)]

# Frame references carry a URL and a few numbers; anything near this size is not ours.
MAX_MESSAGE_BYTES = 64 * 1024


class Contract(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    v: Literal[1] = 1

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()

    def msg_id(self) -> str:
        """The JetStream `Nats-Msg-Id` of this message: the same for a re-publish of it, so that the stream drops
        the copy. Every contract published into a stream says what makes it one message."""
        raise NotImplementedError(f"{type(self).__name__} is not published into a stream")

    @classmethod
    def from_bytes(cls: type[C], data: bytes | str) -> C:
        if len(data) > MAX_MESSAGE_BYTES:
            raise ContractError(f"{cls.__name__}: message of {len(data)} bytes exceeds {MAX_MESSAGE_BYTES}")
        try:
            return cls.model_validate_json(data)
        except ValidationError as exc:
            raise ContractError(f"{cls.__name__}: {exc.error_count()} invalid field(s): {describe_errors(exc, limit=3)}") from exc


C = TypeVar("C", bound=Contract)


class ContractError(ValueError):
    """A message that does not match its contract."""


class DropPolicy(str, enum.Enum):
    """What a full queue does: WAIT holds the producer back, DROP_OLDEST sheds stale frames."""

    WAIT = "WAIT"
    DROP_OLDEST = "DROP_OLDEST"


class FrameRef(Contract):
    """A frame stored in SeaweedFS (claim check): the bytes never travel over NATS."""

    source_id: str = Field(pattern=SOURCE_ID_PATTERN)
    run: str = Field(default="", pattern=RUN_ID_PATTERN, description="the reader start that read it")
    seq: int = Field(ge=0)
    pts: float = Field(ge=0, description="stream time of the frame, seconds from the source's start")
    wall_time: float = Field(description="unix time when the frame was read")
    url: str = Field(min_length=1, max_length=2048)
    width: int = Field(gt=0)
    height: int = Field(gt=0)
    policy: DropPolicy = DropPolicy.DROP_OLDEST

    @property
    def feed(self) -> str:
        return feed_key(self.source_id, self.run)

    @property
    def frame_id(self) -> str:
        return f"{self.source_id}:{self.run}:{self.seq}" if self.run else f"{self.source_id}:{self.seq}"

    @property
    def identity(self) -> str:
        """One frame read once: its source, run and seq, and the time it was read (which also tells apart two runs
        from before run ids)."""
        return f"{self.frame_id}@{self.wall_time:.6f}"

    def msg_id(self) -> str:
        return f"frame:{self.identity}"


class SourceState(str, enum.Enum):
    """Where a source is: the one vocabulary of both its messages, SourceStatus and SourceHealth.

    The values are the ones both messages have always carried, so records already in Redis and in the frames
    stream read as before."""

    STARTED = "started"  # a run began: SourceStatus only (its health meanwhile says CONNECTING)
    CONNECTING = "connecting"
    STREAMING = "streaming"
    STALLED = "stalled"  # live: no frame for stall_timeout, reconnecting next
    RECONNECTING = "reconnecting"
    ENDED = "ended"  # read to its end, or stopped by request
    FAILED = "failed"  # gave up; `error` / `last_error` says why

    @property
    def final(self) -> bool:
        """The run is over: nothing more comes from it."""
        return self in (SourceState.ENDED, SourceState.FAILED)


# What each message may say (checked when built or read, and by mypy): a run's lifecycle has three steps;
# its health has every state but the first.
LifecycleState = Literal[SourceState.STARTED, SourceState.ENDED, SourceState.FAILED]
HealthState = Literal[
    SourceState.CONNECTING,
    SourceState.STREAMING,
    SourceState.STALLED,
    SourceState.RECONNECTING,
    SourceState.ENDED,
    SourceState.FAILED,
]


class SourceHealth(Contract):
    """A source's live state and rates, for people and the api: published on every change and every
    `status_interval` on core NATS, and kept in a Redis key with a TTL. Nothing downstream of the reader
    acts on it; the accounting of a run rides on SourceStatus."""

    source_id: str = Field(pattern=SOURCE_ID_PATTERN)
    state: HealthState
    url: Scrubbed = Field(description="the source with any credentials removed")
    live: bool
    fps: float = Field(ge=0)
    frames_read: int = Field(ge=0)
    frames_published: int = Field(ge=0)
    frames_dropped: dict[str, int] = Field(description="dropped frames by reason")
    reconnects: int = Field(ge=0)
    last_error: Scrubbed | None = None
    state_since: float
    updated_at: float
    instance: str


class SourceStatus(Contract):
    """A run's lifecycle: STARTED, then ENDED or FAILED with the totals the drain check needs. Published in the
    frames stream after the run's last frame, so that the router and the registrator, reading in order, know
    the run is complete when it arrives."""

    source_id: str = Field(pattern=SOURCE_ID_PATTERN)
    run: str = Field(default="", pattern=RUN_ID_PATTERN)
    state: LifecycleState
    wall_time: float
    frames_read: int = Field(default=0, ge=0)
    frames_published: int = Field(default=0, ge=0)
    frames_dropped: int = Field(default=0, ge=0)
    last_seq: int = Field(default=-1, ge=-1)
    error: Scrubbed | None = None

    @property
    def feed(self) -> str:
        return feed_key(self.source_id, self.run)

    def msg_id(self) -> str:
        return f"status:{self.feed}:{self.state.value}@{self.wall_time:.6f}"


class InferenceTask(Contract):
    frame: FrameRef
    model: str = Field(min_length=1, max_length=128)
    routed_at: float
    # A cascade (issue 18): classify these boxes of the frame instead of the whole frame. None: the whole frame, as
    # every task before the cascade said.
    crop: CropRequest | None = None

    def msg_id(self) -> str:
        return self.id_for(self.frame, self.model, self.crop)

    @staticmethod
    def id_for(frame: FrameRef, model: str, crop: CropRequest | None = None) -> str:
        """A frame routed again (a router died before acking it) is the same task: the stream drops it. A frame's
        crops are one task per model and detection model, and never the frame's own task."""
        return f"task:{model}{crop.tag if crop else ''}:{frame.identity}"

    @staticmethod
    def encode(frame_json: bytes, model: str, routed_at: float) -> bytes:
        """The task's JSON around the frame reference's own, already validated, JSON: the router does not
        rebuild and re-serialise the frame for every model of every frame. Decodes to the same task."""
        return b'{"v":1,"frame":%s,"model":%s,"routed_at":%s}' % (
            frame_json,
            json.dumps(model).encode(),
            repr(float(routed_at)).encode(),
        )


class BBox(BaseModel):
    """A box in normalised coordinates (0..1), x to the right, y down."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    x1: float = Field(ge=0, le=1)
    y1: float = Field(ge=0, le=1)
    x2: float = Field(ge=0, le=1)
    y2: float = Field(ge=0, le=1)

    def to_pixels(self, width: int, height: int) -> tuple[int, int, int, int]:
        return (round(self.x1 * width), round(self.y1 * height), round(self.x2 * width), round(self.y2 * height))

    def area(self) -> float:
        return max(0.0, self.x2 - self.x1) * max(0.0, self.y2 - self.y1)

    def iou(self, other: BBox) -> float:
        """Intersection over union: 0 apart, 1 the same box."""
        w = min(self.x2, other.x2) - max(self.x1, other.x1)
        h = min(self.y2, other.y2) - max(self.y1, other.y1)
        inter = max(0.0, w) * max(0.0, h)
        union = self.area() + other.area() - inter
        return inter / union if union > 0 else 0.0


# Boxes of one frame a second model classifies in one task: the router bounds them per frame (max_crops).
MAX_CROPS = 32


class CropRequest(BaseModel):
    """Boxes a detection model found in the frame, for a classification model to classify each (a cascade)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    of: str = Field(min_length=1, max_length=128, description="the detection model whose boxes these are")
    boxes: list[BBox] = Field(min_length=1, max_length=MAX_CROPS)

    @property
    def tag(self) -> str:
        return f"<{self.of}"


class PixelBox(BaseModel):
    """The same box in pixels of the source image (the frame as stored)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    x1: int = Field(ge=0)
    y1: int = Field(ge=0)
    x2: int = Field(ge=0)
    y2: int = Field(ge=0)


class Detection(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    label: str
    class_id: int
    score: float = Field(ge=0, le=1)
    box: BBox
    box_px: PixelBox

    @classmethod
    def on_image(cls, label: str, class_id: int, score: float, box: BBox, width: int, height: int) -> Detection:
        x1, y1, x2, y2 = box.to_pixels(width, height)
        return cls(label=label, class_id=class_id, score=score, box=box, box_px=PixelBox(x1=x1, y1=y1, x2=x2, y2=y2))


class Classification(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    label: str
    class_id: int
    score: float = Field(ge=0, le=1)


class CropLabels(BaseModel):
    """What a classification model made of one box of a crop task: its best classes, best first."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    box: BBox
    classifications: list[Classification]


class ModelKind(str, enum.Enum):
    DETECTION = "detection"
    CLASSIFICATION = "classification"


class Timings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    download_ms: float = 0.0
    preprocess_ms: float = 0.0
    infer_ms: float = 0.0
    postprocess_ms: float = 0.0


class InferenceResult(Contract):
    frame: FrameRef
    model: str
    kind: ModelKind
    instance: str
    model_version: str = ""
    detections: list[Detection] = Field(default_factory=list)
    classifications: list[Classification] = Field(default_factory=list)
    error: Scrubbed | None = None
    timings: Timings = Field(default_factory=Timings)
    finished_at: float
    # The answer to a crop task: the detection model the boxes came from, and each box's classes, in its order.
    crop_of: str | None = None
    crops: list[CropLabels] = Field(default_factory=list)

    def msg_id(self) -> str:
        # One result per frame and model (and crops of a detection model): a redelivered task's answer is a copy too.
        return f"result:{self.model}{'<' + self.crop_of if self.crop_of else ''}:{self.frame.identity}"


class RoutingSummary(Contract):
    """Published by the router once every frame of an ended source is routed: how many tasks each model got."""

    source_id: str = Field(pattern=SOURCE_ID_PATTERN)
    run: str = Field(default="", pattern=RUN_ID_PATTERN)
    frames_routed: int = Field(ge=0)
    tasks: dict[str, int]
    shed: dict[str, int] = Field(default_factory=dict, description="per model: live frames given no task, its queue full")
    wall_time: float

    @property
    def feed(self) -> str:
        return feed_key(self.source_id, self.run)

    def msg_id(self) -> str:
        return f"routed:{self.feed}"  # one summary per run (it has one end): a second router's copy is dropped


class Heartbeat(Contract):
    model: str
    kind: ModelKind
    subject: str
    instance: str
    started_at: float
    processed: int = Field(ge=0)
    in_flight: int = Field(ge=0)
    fps: float = Field(ge=0)

    @classmethod
    def idle(cls, model: str, kind: ModelKind, subject: str, instance: str) -> Heartbeat:
        """A worker that has just started: nothing processed, nothing in hand (what tests and benchmarks declare)."""
        return cls(
            model=model, kind=kind, subject=subject, instance=instance, started_at=time.time(), processed=0, in_flight=0, fps=0
        )


class EventState(str, enum.Enum):
    CREATED = "CREATED"
    PENDING = "PENDING"
    DONE = "DONE"
    FINISHED = "FINISHED"
    ERROR = "ERROR"


class EventClose(str, enum.Enum):
    """Why an event closed: the last two say it ended with what it had, not because the label left the scene."""

    GAP = "gap"  # the label unseen for event_gap of stream time
    MAX_DURATION = "max_duration"  # split at max_event_duration
    SOURCE_END = "source_end"  # its source ended (or a new run of it started)
    NO_RESULTS = "no_results"  # live source: frames came, but no result of its model for event_gap (detector outage)
    NO_FRAMES = "no_frames"  # live source: no frame and no result for event_gap (the camera went dark)


class Event(Contract):
    """One occurrence of a watched label in one source, with its proofs once finalised."""

    id: str = Field(pattern=EVENT_ID_PATTERN, description="<source id>-<random hex>; never the label")
    source_id: str
    run: str = Field(default="", description="the reader start whose frames it is made of")
    model: str
    label: str = Field(description="the most common label among the event's detections")
    label_counts: dict[str, int]
    state: EventState
    start: float = Field(description="stream time of the first detection, seconds")
    end: float = Field(description="stream time of the last detection, seconds")
    start_wall: float
    frames: int = Field(ge=0, description="frames with a watched detection")
    best_score: float
    best_frame_seq: int
    clip_frames: int = 0
    video_proofs: str | None = Field(default=None, description="SeaweedFS URL of the MP4 clip")
    video_proof_path: str | None = Field(default=None, description="local path of the MP4 clip")
    image_proofs: str | None = Field(default=None, description="SeaweedFS URL of the key frame JPEG")
    image_proof_path: str | None = Field(default=None, description="local path of the key frame JPEG")
    image_annotated_proofs: str | None = Field(default=None, description="SeaweedFS URL of the key frame with its boxes")
    stored_bytes: int = Field(default=0, ge=0, description="bytes its proofs (clip and key frames) take in the filer")
    error: Scrubbed | None = None
    closed_by: EventClose | None = Field(default=None, description="why it closed; None while open")
    updated_at: float
    # Per-object events (event_mode=object); the defaults are what a scene event, and any older record, has.
    track_id: int | None = Field(default=None, description="the tracked object's id, per source run and model")
    sub_label: str | None = Field(default=None, description="the majority label of a second model on the object's crops")
    sub_label_score: float | None = Field(default=None, ge=0, le=1, description="the mean score of that label")
    path: list[tuple[float, float, float]] = Field(
        default_factory=list, description="(stream time, x, y) of the box centre, thinned evenly; x, y fractions of the frame"
    )
    zones: list[str] = Field(default_factory=list, description="zones entered, in order")
    stationary: bool = Field(default=False, description="the object stopped moving: the event stopped extending")
    best_box: BBox | None = Field(default=None, description="the object's box in the best frame (best_frame_seq)")


class SourceDrained(Contract):
    """Published by the registrator once an ended source's results are in and its events are final."""

    source_id: str = Field(pattern=SOURCE_ID_PATTERN)
    run: str = Field(default="", pattern=RUN_ID_PATTERN)
    frames_routed: int = Field(ge=0)
    tasks: dict[str, int]
    shed: dict[str, int] = Field(default_factory=dict, description="per model: live frames the router gave no task")
    results: dict[str, int]
    events: int = Field(ge=0)
    wall_time: float
