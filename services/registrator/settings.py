from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from services.registrator.zones import SourceZones
from shared.settings import TaskQueueSettings
from shared.ttl import parse_ttl

# Time for the reader to be ahead of the results and for the clip to be cut, beyond the event itself.
TTL_MARGIN_SECONDS = 30.0


class ModelEventRule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    labels: dict[str, float] = Field(default_factory=dict, description="label -> minimum score")
    sources: dict[str, dict[str, float]] = Field(default_factory=dict, description="source id -> {label: minimum score}")
    # event_mode=object only; names of zones in `zones`. A source that has none of the required zones is not filtered.
    require_zones: list[str] = Field(default_factory=list, description="an object makes an event only once it entered one")
    exclude_zones: list[str] = Field(default_factory=list, description="detections standing in these zones are ignored (a mask)")


class RegistratorSettings(TaskQueueSettings):
    service_name: str = "registrator"

    watch_labels: list[str] = Field(
        default_factory=lambda: ["person"], min_length=1, description="labels that open events (JSON list)"
    )
    min_score: float = Field(default=0.5, ge=0, le=1, description="lowest score of a watched label that counts")
    # Per model, and per model and source, the labels watched with their minimum scores, e.g.
    # {"ssd_mobilenet_v2_coco": {"labels": {"person": 0.5, "car": 0.6}, "sources": {"gate": {"person": 0.7}}}}
    event_rules: dict[str, ModelEventRule] = Field(
        default_factory=dict,
        description="per model (and source): labels and minimum scores (JSON); overrides the two above there",
    )
    event_mode: Literal["scene", "object"] = Field(
        default="object",
        description="object: an event per tracked object; scene: one per watched label while any is seen (before issue 18)",
    )
    object_min_frames: int = Field(
        default=3, ge=1, description="object mode: frames a track needs, at its label's minimum score, before it makes an event"
    )
    object_min_area: float = Field(
        default=0.001,
        ge=0,
        le=1,
        description="object mode: smallest box (a fraction of the frame) that counts towards those frames",
    )
    stationary_after: float = Field(
        default=10.0, gt=0, description="object mode: seconds an object barely moves before its event stops and it is stationary"
    )
    stationary_threshold: float = Field(
        default=0.25, gt=0, description="object mode: a move shorter than this fraction of the box's height is barely moving"
    )
    path_max_points: int = Field(
        default=64, ge=2, le=1000, description="object mode: most points kept of an event's path (thinned evenly)"
    )
    track_lost_seconds: float = Field(
        default=2.0, gt=0, description="object mode: stream seconds a track out of sight keeps its id (occlusions)"
    )
    track_activation_score: float = Field(
        default=0.5, ge=0, le=1, description="object mode: detections above this + 0.1 start tracks; weaker ones only extend them"
    )
    track_match_threshold: float = Field(
        default=0.9, gt=0, le=1, description="object mode: highest matching cost (1 - IoU x score) that continues a track"
    )
    track_stitch_heights: float = Field(
        default=1.0,
        ge=0,
        description="object mode: a new track this near (in box heights) to a lost one continues its event (0: off)",
    )
    track_reorder_depth: int = Field(
        default=8, ge=0, le=256, description="object mode: results held to put replicas' answers back in frame order"
    )
    # Per source id, e.g. {"cam1": {"zones": {"door": {"points": "0.1,0.5,0.4,0.5,0.4,1,0.1,1"}},
    #                              "lines": {"gate": {"points": [[0.5, 0], [0.5, 1]], "in_side": "right"}}}}
    zones: dict[str, SourceZones] = Field(
        default_factory=dict, description="per source: zones (polygons) and lines (two points), as fractions of the frame (JSON)"
    )
    event_gap: float = Field(
        default=2.0,
        gt=0,
        description="seconds of stream time without the label that close an event (live: also of wall time without a result)",
    )
    max_event_duration: float = Field(default=120.0, gt=0, description="an event is split after this many seconds")
    pre_roll: float = Field(default=2.0, ge=0, description="seconds of video kept before an event in its clip")
    post_roll: float = Field(default=2.0, ge=0, description="seconds of video kept after an event in its clip")
    clip_fps: int = Field(default=10, ge=1, le=60, description="frame rate of the proof clips")
    ring_max_frames: int = Field(default=20_000, ge=100, description="most frame references kept per source")
    drain_timeout: float = Field(
        default=90.0, gt=0, description="seconds an ended source waits for missing results (> task_max_age)"
    )
    absorb_interval: float = Field(
        default=0.1,
        ge=0,
        le=2.0,
        description="seconds between a source's batches of results: a live camera's results share one batch's work "
        "(the tracker's saved state, one Redis transaction); 0: each batch as soon as it arrives",
    )
    results_lag_max_pending: int = Field(
        default=10_000, ge=1, description="/healthz is unhealthy while more results than this wait for the registrator"
    )
    results_lag_max_age: float = Field(
        default=60.0, gt=0, description="/healthz is unhealthy while the oldest result not yet absorbed is older (s)"
    )
    dedup_window_frames: int = Field(
        default=16_384,
        ge=1024,
        multiple_of=8,
        description="frames per source run and model whose results are told apart from redeliveries (a bit each); "
        "a result further behind the newest is dropped",
    )
    lease_ttl: float = Field(
        default=6.0,
        ge=1.0,
        le=60.0,
        description="seconds a replica's hold on a source lasts unless renewed: a dead replica's sources move after this",
    )
    finalise_concurrency: int = Field(default=2, ge=1, description="events whose proofs are made at once")
    finalise_retries: int = Field(default=12, ge=0, description="retries of proofs while storage is away (1 s doubling to 30 s)")
    event_retention_days: float = Field(
        default=30.0, ge=0, description="events older than this go, with their files, oldest first; 0 keeps them by age"
    )
    event_storage_max_gb: float = Field(
        default=50.0,
        ge=0,
        description="the oldest events go, with their files, while their clips and key frames take more (GB); 0: no budget",
    )
    retention_interval: float = Field(default=300.0, gt=0, description="seconds between retention sweeps")
    notify_update_interval: float = Field(
        default=5.0, ge=0, description="least seconds between two `update` notices of one event (docs/notifications.md)"
    )

    @model_validator(mode="after")
    def _rules_name_known_zones(self) -> RegistratorSettings:
        known = {name for source in self.zones.values() for name in source.zones}
        for model, rule in self.event_rules.items():
            for field, names in (("require_zones", rule.require_zones), ("exclude_zones", rule.exclude_zones)):
                for name in names:
                    if name not in known:
                        raise ValueError(
                            f"event_rules[{model!r}].{field} names zone {name!r}, which no source defines; "
                            f"add it under zones.<source>.zones (defined: {sorted(known) or 'none'})"
                        )
        return self

    @model_validator(mode="after")
    def _frames_outlive_events(self) -> RegistratorSettings:
        # A clip is cut from frames stored with ttl_bucket: they must still exist when the event closes.
        needed = self.max_event_duration + self.pre_roll + self.post_roll + TTL_MARGIN_SECONDS
        if parse_ttl(self.ttl_bucket) < needed:
            raise ValueError(
                f"ttl_bucket {self.ttl_bucket} is shorter than max_event_duration + pre_roll + post_roll + "
                f"{TTL_MARGIN_SECONDS:.0f} s = {needed:.0f} s: frames would expire before their clip is cut"
            )
        return self

    @model_validator(mode="after")
    def _drain_outwaits_tasks(self) -> RegistratorSettings:
        # A task routed just before its source ended may be answered up to task_max_age later (redelivered to
        # another worker); a drain that gives up sooner closes the source without results that were coming.
        if self.drain_timeout <= self.task_max_age:
            raise ValueError(
                f"drain_timeout ({self.drain_timeout:g} s) must exceed task_max_age ({self.task_max_age:g} s): "
                "an ended source would be drained before its last tasks are answered"
            )
        return self
