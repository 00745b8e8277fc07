from __future__ import annotations

from pydantic import Field

from shared.settings import VigilSettings


class RouterSettings(VigilSettings):
    service_name: str = "router"

    live_refresh_seconds: float = Field(default=1.0, gt=0, description="how often the live-model view is re-read")
    task_backlog_limit: int = Field(default=32, ge=1, description="WAIT frames: most tasks queued per model before routing waits")
    route_batch: int = Field(default=64, ge=1, le=1024, description="frame references fetched per pull")
