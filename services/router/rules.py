"""Which models see which frames: per-model source lists and sampling (every Nth frame, at most F per second), and
the cascade: a model with an `on` rule sees crops of another model's detections instead of whole frames."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from shared.contracts import MAX_CROPS, BBox, FrameRef, InferenceResult, ModelKind
from shared.rate import StreamRate

ALL_SOURCES = "*"


class CropRule(BaseModel):
    """Which detections of a detection model become crops for the rule's model (a classifier)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(min_length=1, description="the detection model whose results give the crops")
    labels: list[str] = Field(min_length=1, description="its detection labels that are cropped, e.g. [car, truck, bus]")
    min_score: float = Field(default=0.5, ge=0, le=1, description="least detection score of a cropped box")
    min_area: float = Field(default=0.0, ge=0, le=1, description="least box area, a fraction of the frame's")
    max_crops: int = Field(default=4, ge=1, le=MAX_CROPS, description="most boxes of one frame classified (largest first)")

    @field_validator("labels")
    @classmethod
    def _plain_labels(cls, labels: list[str]) -> list[str]:
        blank = [label for label in labels if not label.strip()]
        if blank:
            raise ValueError(f"labels must name detection labels (e.g. [car, truck, bus]), not {labels!r}")
        return list(dict.fromkeys(labels))


class ModelRule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    sources: list[str] = Field(default_factory=lambda: [ALL_SOURCES], description="source ids this model sees; * for all")
    every_nth: int = Field(default=1, ge=1, description="route one frame in N of each source (by seq)")
    max_fps: float = Field(default=0.0, ge=0, description="at most this many frames per second of each source; 0 = no limit")
    on: CropRule | None = Field(
        default=None, description="crops of another model's detections instead of whole frames (a cascade); sampling applies"
    )


def check_cascades(rules: dict[str, ModelRule]) -> None:
    """What can be told of the crop rules before any model is live; ValueError naming the fix."""
    for model, rule in rules.items():
        if rule.on is None:
            continue
        source = rule.on.model
        if source == model:
            raise ValueError(
                f"routing_rules.{model}.on.model names {model} itself: name the detection model whose boxes it classifies"
            )
        if (upstream := rules.get(source)) is not None and upstream.on is not None:
            raise ValueError(
                f"routing_rules.{model}.on.model names {source}, which itself gets crops (routing_rules.{source}.on): "
                "name a detection model that sees whole frames"
            )


class RoutingRules:
    """Decides per (frame, model). Sampling by `seq` is the same on every router replica; the rate limit
    keeps its schedule per replica, so with R replicas a model sees at most R x max_fps."""

    def __init__(self, rules: dict[str, ModelRule]) -> None:
        check_cascades(rules)
        self.rules = rules
        self._rates: dict[tuple[str, str], tuple[str, StreamRate]] = {}  # (model, source) -> (run, its gate)
        # Detection model -> the models that classify its crops.
        self.cascades: dict[str, list[str]] = {}
        for model, rule in rules.items():
            if rule.on is not None:
                self.cascades.setdefault(rule.on.model, []).append(model)

    def takes_crops(self, model: str) -> bool:
        """A model with an `on` rule gets crops only: no whole frame."""
        rule = self.rules.get(model)
        return rule is not None and rule.on is not None

    def wants(self, model: str, frame: FrameRef) -> bool:
        rule = self.rules.get(model)
        if rule is None:
            return True
        if rule.on is not None:
            return False
        return self._sampled(model, rule, frame)

    def crops(self, model: str, result: InferenceResult) -> list[BBox]:
        """The boxes of a detection result that `model` classifies: the rule's labels at its minimum score and
        area, largest first (the likeliest to classify well), at most max_crops; none where sampling skips the
        frame. A frame with nothing to crop takes no slot of max_fps."""
        rule = self.rules.get(model)
        crop = rule.on if rule is not None else None
        if rule is None or crop is None or result.model != crop.model or result.kind is not ModelKind.DETECTION or result.error:
            return []
        chosen = [
            d for d in result.detections if d.label in crop.labels and d.score >= crop.min_score and d.box.area() >= crop.min_area
        ]
        if not chosen or not self._sampled(model, rule, result.frame):
            return []
        chosen.sort(key=lambda d: (d.box.area(), d.score), reverse=True)
        return [d.box for d in chosen[: crop.max_crops]]

    def _sampled(self, model: str, rule: ModelRule, frame: FrameRef) -> bool:
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
