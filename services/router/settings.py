from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from services.router.rules import ModelRule, check_cascades
from shared.bus import MAX_DELIVER
from shared.settings import VigilSettings
from shared.ttl import parse_ttl


class RouterSettings(VigilSettings):
    service_name: str = "router"

    live_refresh_seconds: float = Field(default=1.0, gt=0, description="how often the live-model view is re-read")
    task_backlog_limit: int = Field(default=32, ge=1, description="WAIT frames: most tasks queued per model before routing waits")
    # Live frames (DROP_OLDEST) are shed here rather than queued behind work a model's workers cannot answer in time:
    # a live camera on a machine that cannot keep up gets fresh answers for some frames, not late ones for all.
    live_backlog_seconds: float = Field(
        default=0.1,
        ge=0,
        description="live frames: most queued work per model, in seconds at its workers' measured rate, before a "
        "frame is shed for it (counted); 0 queues every live frame (the task queue's cap and max age still shed)",
    )
    route_batch: int = Field(default=64, ge=1, le=1024, description="frame references fetched and routed together")
    # Per model, e.g. {"efficientnet_lite0": {"sources": ["cam1"], "every_nth": 5, "max_fps": 2}}; others see every frame.
    # A cascade: {"efficientnet_lite0": {"on": {"model": "ssd_mobilenet_v2_coco", "labels": ["car", "truck", "bus"]}}}.
    routing_rules: dict[str, ModelRule] = Field(
        default_factory=dict,
        description="per model: sources, every_nth, max_fps, on (a cascade) (JSON); a model not named sees every frame",
    )
    model_grace: float = Field(
        default=60.0, ge=0, description="seconds a model with no live instance still gets tasks, queued for its restart"
    )
    frames_ack_wait: float = Field(default=30.0, gt=0, description="seconds before frames a dead router held go to another")
    summary_timeout: float = Field(
        default=45.0, gt=0, description="seconds an ended source waits for its last frames to be counted by every replica"
    )

    @field_validator("routing_rules")
    @classmethod
    def _cascades_name_detection_models(cls, rules: dict[str, ModelRule]) -> dict[str, ModelRule]:
        check_cascades(rules)
        return rules

    @model_validator(mode="after")
    def _summary_outwaits_redelivery(self) -> RouterSettings:
        # A router killed with frames in hand has them routed again after frames_ack_wait; a summary
        # written before that would count them short.
        if self.summary_timeout <= self.frames_ack_wait:
            raise ValueError(f"summary_timeout ({self.summary_timeout} s) must exceed frames_ack_wait ({self.frames_ack_wait} s)")
        # The frames stream drops a reference after ttl_bucket, delivered or not: a frame a dead router held
        # must still be there for each of its redeliveries.
        deliveries = self.frames_ack_wait * MAX_DELIVER
        if parse_ttl(self.ttl_bucket) <= deliveries:
            raise ValueError(
                f"ttl_bucket ({self.ttl_bucket}) must exceed frames_ack_wait x {MAX_DELIVER} deliveries ({deliveries:g} s): "
                "frames a dead router held would expire before they are routed again"
            )
        return self
