"""What the api answers, as pydantic models: the handlers build their bodies with them and the OpenAPI
document describes its responses with their JSON schemas, so the two cannot drift apart."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, create_model

from shared.contracts import Event, Heartbeat, SourceHealth

# Fields of the stored record that only make sense inside the fleet (local paths, storage URLs):
# the api links to the proofs through itself instead.
INTERNAL_FIELDS = frozenset({"video_proofs", "video_proof_path", "image_proofs", "image_proof_path", "image_annotated_proofs"})


class Answer(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EventLinks(Answer):
    self: str = Field(description="this event")
    clip: str | None = Field(description="its MP4 proof clip, once written")
    keyframe: str | None = Field(description="its key frame JPEG, once written")
    keyframe_annotated: str | None = Field(description="its key frame with the boxes drawn, once written")


# The stored Event less its internal fields, plus links: derived from the contract, so a field added to
# Event shows up here (and in the document) without anyone remembering to.
_PUBLIC_FIELDS: dict[str, Any] = {
    name: (info.annotation, info) for name, info in Event.model_fields.items() if name not in INTERNAL_FIELDS
}
PublicEvent: type[Answer] = create_model(
    "Event",
    __base__=Answer,
    __doc__=Event.__doc__,
    links=(EventLinks, ...),
    **_PUBLIC_FIELDS,
)


class EventPage(Answer):
    events: list[PublicEvent]  # type: ignore[valid-type]
    next_cursor: str | None = Field(
        description="pass it back as `cursor` for the next page; null on the last (a page of a rare combination of "
        "filters may hold fewer than `limit` events and still have one)"
    )


class Sources(Answer):
    sources: list[SourceHealth]


class LayoutLine(Answer):
    points: list[tuple[float, float]] = Field(description="its two ends, as fractions of the frame's width and height")
    in_side: str = Field(description="crossing onto this side (left or right, walking from the first point) counts as in")


class LayoutFrame(Answer):
    event_id: str = Field(description="the source's newest event that has a key frame")
    start_wall: float
    keyframe: str = Field(description="that key frame (the object's best frame in object mode)")


class SourceLayout(Answer):
    """A source's zones and lines as configured (the registrator's `zones` setting), and a recent frame of it."""

    source_id: str
    zones: dict[str, list[tuple[float, float]]] = Field(description="polygon corners, as fractions of the frame")
    lines: dict[str, LayoutLine]
    frame: LayoutFrame | None = Field(description="null while the source has no event with a key frame")


class Services(Answer):
    models: dict[str, list[Heartbeat]] = Field(description="live instances per model name")


class ModelTotals(Answer):
    routed: int = Field(ge=0)
    shed: int = Field(ge=0, description="live frames given no task: the model's queue held live_backlog_seconds of work")
    inferred: int = Field(ge=0)
    errors: int = Field(ge=0)


class SourceTotals(Answer):
    frames_read: int | None = Field(ge=0, description="null once the source's health record has expired")
    frames_published: int | None = Field(ge=0)
    frames_dropped: int | None = Field(ge=0)
    frames_routed: int = Field(ge=0)
    events: int = Field(ge=0)
    models: dict[str, ModelTotals]
    lines: dict[str, dict[str, dict[str, int]]] = Field(
        default_factory=dict, description="per configured line, per label: objects crossing it `in` and `out`"
    )


class Totals(Answer):
    sources: dict[str, SourceTotals]


class ErrorDetail(Answer):
    status: int = Field(ge=400, le=599)
    message: str


class Error(Answer):
    """Every error the api answers has this body."""

    error: ErrorDetail


class OpenApiDocument(BaseModel):
    """The document itself: an OpenAPI 3.1 object (its own schema is the OpenAPI specification's)."""

    model_config = ConfigDict(extra="allow")

    openapi: str = Field(pattern=r"^3\.1\.\d+$")


def dump(model: type[BaseModel], doc: dict[str, Any]) -> dict[str, Any]:
    """`doc` checked against `model` and written as JSON: an answer that breaks the document fails here,
    in the api's own tests, rather than in a client."""
    return model.model_validate(doc).model_dump(mode="json")
