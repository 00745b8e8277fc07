from __future__ import annotations

from pydantic import Field

from services.router.rules import ModelRule
from shared.settings import VigilSettings


class RouterSettings(VigilSettings):
    service_name: str = "router"

    live_refresh_seconds: float = Field(default=1.0, gt=0, description="how often the live-model view is re-read")
    task_backlog_limit: int = Field(default=32, ge=1, description="WAIT frames: most tasks queued per model before routing waits")
    route_batch: int = Field(default=64, ge=1, le=1024, description="frame references fetched and routed together")
    # Per model, e.g. {"efficientnet_lite0": {"sources": ["cam1"], "every_nth": 5, "max_fps": 2}}; others see every frame.
    routing_rules: dict[str, ModelRule] = Field(default_factory=dict)
    summary_timeout: float = Field(default=30.0, gt=0, description="seconds an ended source waits for other replicas' counts")
