"""Zones and lines of a source, free of I/O: settings, point in polygon, line crossings.

Points are fractions of the frame's width and height (0..1, x to the right, y down), as Frigate writes them, so
that a zone survives a change of resolution. Either a list of [x, y] pairs or Frigate's flat string
"x1,y1,x2,y2,...".

An object is in a zone when the bottom centre of its box is (Frigate does the same: where it stands, not
where its head is). A line is crossed when the centre of a track's box moves from one side of it to the other
between two sightings, over the segment itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from shared.contracts import BBox

Point = tuple[float, float]
Direction = Literal["in", "out"]


def _parse_points(value: object) -> object:
    """Frigate's flat "x1,y1,x2,y2,..." string as pairs; anything else goes to pydantic as it is."""
    if not isinstance(value, str):
        return value
    try:
        numbers = [float(part) for part in value.split(",") if part.strip()]
    except ValueError as exc:
        raise ValueError(f"points {value!r}: not a list of numbers ({exc})") from exc
    if len(numbers) % 2:
        raise ValueError(f"points {value!r}: an odd count of numbers; write x,y pairs")
    return [(numbers[i], numbers[i + 1]) for i in range(0, len(numbers), 2)]


Points = Annotated[list[Point], BeforeValidator(_parse_points)]


class ZoneSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    points: Points = Field(description="polygon corners as fractions of width and height: [[x, y], ...] or 'x1,y1,...'")


class LineSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    points: Points = Field(description="the line's two ends as fractions of width and height")
    in_side: Literal["left", "right"] = Field(
        default="right",
        description="crossing onto this side counts as in: the side on your left or right walking from the first "
        "point to the second (x right, y down)",
    )


class SourceZones(BaseModel):
    """A source's zones and lines, by name."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    zones: dict[str, ZoneSettings] = Field(default_factory=dict)
    lines: dict[str, LineSettings] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check_points(self) -> SourceZones:
        for kind, shapes, need in (("zone", self.zones, 3), ("line", self.lines, 2)):
            for name, shape in shapes.items():
                _check_shape(kind, name, shape.points, need)
        return self


def _check_shape(kind: str, name: str, points: list[Point], need: int) -> None:
    if not name or not name.replace("_", "").replace("-", "").isalnum():
        raise ValueError(f"{kind} name {name!r}: use letters, digits, '-' and '_' only")
    count_ok = len(points) >= need if kind == "zone" else len(points) == need
    if not count_ok:
        wanted = f"at least {need}" if kind == "zone" else f"exactly {need}"
        raise ValueError(f"{kind} {name!r} has {len(points)} point(s); it needs {wanted}")
    for i, (x, y) in enumerate(points, start=1):
        if not (0.0 <= x <= 1.0 and 0.0 <= y <= 1.0):
            raise ValueError(
                f"{kind} {name!r}: point {i} ({x:g}, {y:g}) is outside 0..1; points are fractions of the frame's "
                "width and height, not pixels"
            )
    if kind == "line" and points[0] == points[1]:
        raise ValueError(f"line {name!r}: its two points are the same")


# -- geometry --------------------------------------------------------------------------------------


def bottom_centre(box: BBox) -> Point:
    return ((box.x1 + box.x2) / 2, box.y2)


def centre(box: BBox) -> Point:
    return ((box.x1 + box.x2) / 2, (box.y1 + box.y2) / 2)


def inside(point: Point, polygon: list[Point]) -> bool:
    """Even-odd ray casting; a point on an edge may fall either way (a one-frame difference)."""
    x, y = point
    hit = False
    j = len(polygon) - 1
    for i, (xi, yi) in enumerate(polygon):
        xj, yj = polygon[j]
        if (yi > y) != (yj > y) and x < (xj - xi) * (y - yi) / (yj - yi) + xi:
            hit = not hit
        j = i
    return hit


def side(point: Point, a: Point, b: Point) -> float:
    """> 0 on the right of a->b (x right, y down), < 0 on the left, 0 on the line."""
    return (b[0] - a[0]) * (point[1] - a[1]) - (b[1] - a[1]) * (point[0] - a[0])


@dataclass(frozen=True)
class Zone:
    name: str
    polygon: list[Point]

    def holds(self, box: BBox) -> bool:
        return inside(bottom_centre(box), self.polygon)


@dataclass(frozen=True)
class Line:
    name: str
    a: Point
    b: Point
    in_side: Literal["left", "right"] = "right"

    def crossing(self, before: Point, after: Point) -> Direction | None:
        """The direction of a move from `before` to `after` over this line's segment, or None."""
        s0, s1 = side(before, self.a, self.b), side(after, self.a, self.b)
        if s0 == 0 or s1 == 0 or (s0 > 0) == (s1 > 0):
            return None  # same side, or only touching: the next move decides
        # The move crosses the infinite line; it crosses the segment when the ends lie on both sides of the move.
        e0, e1 = side(self.a, before, after), side(self.b, before, after)
        if e0 != 0 and e1 != 0 and (e0 > 0) == (e1 > 0):
            return None
        onto_right = s1 > 0
        return "in" if onto_right == (self.in_side == "right") else "out"


@dataclass(frozen=True)
class SourceGeometry:
    """A source's zones and lines, ready to test boxes against."""

    zones: tuple[Zone, ...] = ()
    lines: tuple[Line, ...] = ()

    @classmethod
    def from_settings(cls, settings: SourceZones) -> SourceGeometry:
        return cls(
            zones=tuple(Zone(name, list(z.points)) for name, z in settings.zones.items()),
            lines=tuple(Line(name, ln.points[0], ln.points[1], ln.in_side) for name, ln in settings.lines.items()),
        )

    def zones_of(self, box: BBox) -> list[str]:
        return [zone.name for zone in self.zones if zone.holds(box)]

    def crossings(self, before: Point, after: Point) -> list[tuple[str, Direction]]:
        found = []
        for line in self.lines:
            direction = line.crossing(before, after)
            if direction is not None:
                found.append((line.name, direction))
        return found
