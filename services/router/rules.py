"""Which models see which frames: per-model source lists and sampling (every Nth frame, at most F per second)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from shared.contracts import FrameRef
from shared.rate import StreamRate

ALL_SOURCES = "*"


class ModelRule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    sources: list[str] = Field(default_factory=lambda: [ALL_SOURCES], description="source ids this model sees; * for all")
    every_nth: int = Field(default=1, ge=1, description="route one frame in N of each source (by seq)")
    max_fps: float = Field(default=0.0, ge=0, description="at most this many frames per second of each source; 0 = no limit")


class RoutingRules:
    """Decides per (frame, model). Sampling by `seq` is the same on every router replica; the rate limit
    keeps its schedule per replica, so with R replicas a model sees at most R x max_fps."""

    def __init__(self, rules: dict[str, ModelRule]) -> None:
        self.rules = rules
        self._rates: dict[tuple[str, str], tuple[str, StreamRate]] = {}  # (model, source) -> (run, its gate)

    def wants(self, model: str, frame: FrameRef) -> bool:
        rule = self.rules.get(model)
        if rule is None:
            return True
        if ALL_SOURCES not in rule.sources and frame.source_id not in rule.sources:
            return False
        if frame.seq % rule.every_nth:
            return False
        if rule.max_fps:
            key = (model, frame.source_id)
            run, rate = self._rates.get(key, ("", None))
            if rate is None or run != frame.run:
                rate = StreamRate(rule.max_fps)  # a new run of the source: its pts start at 0 again, and so does its schedule
                self._rates[key] = (frame.run, rate)
            return rate.take(frame.pts)
        return True
